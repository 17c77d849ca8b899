#!/usr/bin/env python3
"""Image conversion: lazylayer against ``pigz -dc | zstd -3 -T2`` and skopeo, all in one run.

What it measures
    Converting one OCI image with a single gzip layer of at least 500 MB
    (uncompressed) into zstd, as wall-clock throughput (MB/s of *uncompressed*
    tar, MB = 10**6 bytes), CPU use (cores busy on average) and output size:

    a) ``pigz -dc layer.tar.gz | zstd -3 -T2 -q -c > out.zst`` - the same work
       done by the best standard tools (gunzip, zstd level 3 on both cores,
       write a file), but no image handling, no hashing, no index;
    b) lazylayer, ``Converter().convert("oci:src:v1", "oci:dst:v1")`` in this
       process (only the call is timed): defaults, i.e. 2 MiB frames, level 3,
       one compression thread per CPU;
    c) ``skopeo copy --dest-compress-format zstd:chunked oci:src:v1 oci:dstc:v1``,
       the nearest existing conversion to a lazily pullable format (Debian's
       skopeo), twice: at skopeo's default level for zstd:chunked (10 in
       1.9.3) and with ``--dest-compress-level 3``, the level everything else
       here uses.  If that skopeo refuses zstd:chunked, its error is reported
       instead of a number and ``--dest-compress-format zstd`` is timed.

    Extra rows explain where the time goes rather than compete: ``pigz -dc``
    alone, ``zstd -3 -T2`` on the plain tar alone, lazylayer's gunzip alone
    (ISA-L, as the converter runs it) and lazylayer's ``LayerWriter`` on the
    plain tar alone (tar walk, hashing, frame compression; no gunzip).

    Sizes: our layer blob against plain ``zstd -3 -q -c layer.tar`` (one
    thread, one frame: the reference for the size target), the pigz|zstd
    output and skopeo's layer blobs.

Why this way
    The data is a complete tar of real files: whole directories under /usr,
    taken in sorted order until their apparent size reaches ``--size-mb``
    (directories bigger than half the target are skipped so one package does
    not make up the layer), written with ``tar --sort=name`` and compressed
    with ``pigz -6`` (gzip's default level, as image builders use).  The OCI
    layout around it is built here by hand: the gzip blob, a config whose
    rootfs.diff_ids holds the tar's sha256, a manifest and an index.json
    tagging it ``v1``.  The input is read once before timing so every case
    starts with it in the page cache; outputs are deleted between runs
    (outside the timing).  The cases run interleaved (a, b, c, a, b, c, ...),
    ``--repeat`` times each, and the median is reported with the min-max
    range; every ratio is between medians from the same run.  CPU time comes
    from ``getrusage``: children for the tools (a shell's children included),
    this process for lazylayer (all its threads).  The report records how much
    CPU other processes used during the run: on 2 cores any other work
    distorts the numbers.  Nothing here asserts on timings; the targets are
    reported as met or not met.

    Our output is checked once, untimed: ``zstd -d -c`` of the layer blob must
    hash to the config's diff_id.

Targets (from the issue)
    - converting a >= 500 MB gzip layer runs at >= 0.8x the throughput of
      ``pigz -dc | zstd -3 -T2`` on the same layer in the same run (compared
      with skopeo's zstd:chunked conversion);
    - converted size <= 1.05x plain ``zstd -3`` of the same tar.

Usage
    python benchmarks/convert.py [--workdir DIR] [--size-mb N] [--repeat N]
        [--rebuild] [--quick] [--no-explain] [--out FILE]

    ``--quick`` (64 MB of data, 1 repeat) is a smoke check only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import cpu_children, cpu_self, file_sha256, machine_line, package_version

from lazylayer.convert import Converter
from lazylayer.format import LAYER_FRAME_SIZE, LayerWriter, decompressed_chunks

MB = 10**6
TAG = "v1"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    """Run a command (a list, or a string for bash); fail loudly with its stderr."""
    shell = isinstance(cmd, str)
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd] if shell else cmd,
                       capture_output=True, check=False, **kw)
    if p.returncode != 0:
        text = cmd if shell else shlex.join(cmd)
        raise SystemExit(f"{text} exited {p.returncode}:\n{p.stderr.decode(errors='replace')}")
    return p


# ----------------------------------------------------------------- test data


@dataclass
class Data:
    tar: Path
    gz: Path
    layout: Path
    tar_size: int
    gz_size: int
    diff_id: str
    entries: int
    paths: list[str]


def pick_paths(target: int) -> list[str]:
    """Entries of /usr/*/* (sorted) whose apparent sizes add up to at least ``target`` bytes."""
    candidates = sorted(str(p.relative_to("/")) for p in Path("/usr").glob("*/*"))
    out = sh(["du", "-s", "-b", "--", *("/" + c for c in candidates)], text=True).stdout
    sizes = {}
    for line in out.splitlines():
        size, path = line.split("\t", 1)
        sizes[path.lstrip("/")] = int(size)
    picked, total = [], 0
    for c in candidates:
        size = sizes.get(c, 0)
        if size > target // 2:
            continue
        picked.append(c)
        total += size
        if total >= target:
            return picked
    raise SystemExit(f"/usr holds only {total:,} bytes in entries under {target // 2:,} bytes; "
                     "use a smaller --size-mb")


def write_blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def build_layout(layout: Path, gz: Path, diff_id: str) -> None:
    """A one-image OCI layout: the gzip layer (hard-linked), config, manifest, index tagged TAG."""
    if layout.exists():
        shutil.rmtree(layout)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    gz_digest = file_sha256(gz)
    os.link(gz, layout / "blobs" / "sha256" / gz_digest[7:])
    config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/bin:/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    cdesc = {"mediaType": OCI_CONFIG, **write_blob(layout, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc,
                "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": gz_digest, "size": gz.stat().st_size}]}
    mdesc = {"mediaType": OCI_MANIFEST, **write_blob(layout, json.dumps(manifest).encode()),
             "annotations": {REF_NAME: TAG}}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [mdesc]}
    (layout / "index.json").write_text(json.dumps(index))


def prepare_data(workdir: Path, size_mb: int, rebuild: bool) -> Data:
    workdir.mkdir(parents=True, exist_ok=True)
    stem = workdir / f"usr-{size_mb}M"
    tar, gz, layout = stem.with_suffix(".tar"), stem.with_suffix(".tar.gz"), Path(f"{stem}-src")
    listing, meta = stem.with_suffix(".paths"), stem.with_suffix(".json")
    if rebuild or not (tar.exists() and gz.exists() and meta.exists() and layout.exists()):
        for p in (tar, gz, meta):
            p.unlink(missing_ok=True)
        paths = pick_paths(size_mb * MB)
        listing.write_text("".join(p + "\n" for p in paths))
        log(f"writing {tar} from {len(paths)} entries of /usr/*/* ({paths[0]} ... {paths[-1]})")
        part = tar.with_suffix(".part")
        p = subprocess.run(["tar", "-cf", str(part), "--sort=name", "-C", "/", "-T", str(listing)],
                           capture_output=True, text=True, check=False)
        # 1: "file changed as we read it" - the archive is still complete and valid.
        if p.returncode not in (0, 1):
            raise SystemExit(f"tar failed ({p.returncode}): {p.stderr}")
        if p.returncode == 1:
            log(f"tar warned: {p.stderr.strip()}")
        part.rename(tar)
        log(f"compressing with pigz -6 -> {gz}")
        sh(f"pigz -6 -c {shlex.quote(str(tar))} > {shlex.quote(str(gz))}.part && "
           f"mv {shlex.quote(str(gz))}.part {shlex.quote(str(gz))}")
        diff_id = file_sha256(tar)
        entries = int(sh(f"tar -tf {shlex.quote(str(tar))} | wc -l", text=True).stdout)
        build_layout(layout, gz, diff_id)
        meta.write_text(json.dumps({"diff_id": diff_id, "entries": entries, "paths": paths}))
    m = json.loads(meta.read_text())
    return Data(tar, gz, layout, tar.stat().st_size, gz.stat().st_size, m["diff_id"], m["entries"], m["paths"])


# ----------------------------------------------------------------- measuring


DISTURBED = 0.1  # other processes busy on more than this many cores on average during a run


def load_sample() -> tuple[float, float, float]:
    """(CPU-s the whole machine spent busy, CPU-s we and our children spent, time)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return busy, cpu_self() + cpu_children(), time.perf_counter()


def other_cpu(start: tuple[float, float, float], end: tuple[float, float, float]) -> float:
    """CPU-s other processes used between two samples."""
    return max(0.0, (end[0] - start[0]) - (end[1] - start[1]))


class OtherLoad:
    """CPU time other processes used while the benchmark ran (from /proc/stat,
    minus our own and our children's), so a disturbed run shows in the report."""

    def __init__(self) -> None:
        self.start = load_sample()
        self.load_start = os.getloadavg()[0]

    def summary(self) -> str:
        end = load_sample()
        other, t0, t1 = other_cpu(self.start, end), self.start[2], end[2]
        return (f"the timed part took {t1 - t0:.0f} s; other processes used {other:.1f} CPU-s "
                f"({other / (t1 - t0):.2f} cores on average); 1-min load average "
                f"{self.load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")


@dataclass
class Case:
    """One timed case: ``run`` does the work; ``outputs`` are removed before each run."""

    name: str
    command: str
    run: Callable[[], None]
    in_process: bool
    outputs: list[Path]
    explain: bool = False
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)  # cores other processes kept busy, per run

    def clean(self) -> None:
        for p in self.outputs:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)

    def once(self) -> None:
        self.clean()
        cpu = cpu_self if self.in_process else cpu_children
        s0 = load_sample()
        c0, t0 = cpu(), time.perf_counter()
        self.run()
        t1, c1 = time.perf_counter(), cpu()
        self.wall.append(t1 - t0)
        self.cpu.append(c1 - c0)
        self.other.append(other_cpu(s0, load_sample()) / (t1 - t0))

    @property
    def disturbed(self) -> bool:
        return max(self.other) > DISTURBED

    def mbps(self, nbytes: int) -> list[float]:
        return [nbytes / MB / t for t in self.wall]

    def median_mbps(self, nbytes: int) -> float:
        return nbytes / MB / statistics.median(self.wall)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def layer_blob(layout: Path) -> tuple[Path, str]:
    """The single layer blob of the image tagged TAG in an OCI layout, and its config's diff_id."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == TAG)
    manifest = json.loads((blobs / desc["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    [layer] = manifest["layers"]
    [diff_id] = config["rootfs"]["diff_ids"]
    return blobs / layer["digest"][7:], diff_id


def skopeo_format(workdir: Path) -> tuple[list[str], str | None]:
    """The skopeo flags that make zstd:chunked (or, failing that, zstd) and skopeo's refusal if any.

    Tried on a tiny image first, so a refusal costs nothing.
    """
    tiny = workdir / "tiny"
    if tiny.exists():
        shutil.rmtree(tiny)
    (tiny / "data").mkdir(parents=True)
    (tiny / "data" / "hello.txt").write_text("hello\n" * 1000)
    tar = tiny / "layer.tar"
    sh(["tar", "-cf", str(tar), "-C", str(tiny / "data"), "hello.txt"])
    sh(f"pigz -6 -c {tar} > {tar}.gz")
    build_layout(tiny / "src", Path(f"{tar}.gz"), file_sha256(tar))
    errors = []
    for flags in (["--dest-compress-format", "zstd:chunked"],
                  ["--dest-compress", "--dest-compress-format", "zstd:chunked"]):
        dst = tiny / "dst"
        if dst.exists():
            shutil.rmtree(dst)
        p = subprocess.run(["skopeo", "copy", "-q", *flags, f"oci:{tiny}/src:{TAG}", f"oci:{dst}:{TAG}"],
                           capture_output=True, text=True, check=False)
        if p.returncode == 0:
            ann = json.loads((tiny / "dst" / "index.json").read_text())["manifests"][0]
            manifest = json.loads((dst / "blobs" / "sha256" / ann["digest"][7:]).read_text())
            if any(k.startswith("io.containers.zstd-chunked")
                   for k in manifest["layers"][0].get("annotations", {})):
                shutil.rmtree(tiny)
                return flags, None
            errors.append(f"`skopeo copy {' '.join(flags)}` succeeded but wrote no zstd:chunked annotations")
        else:
            errors.append(f"`skopeo copy {' '.join(flags)}`: {p.stderr.strip()}")
    shutil.rmtree(tiny)
    return ["--dest-compress-format", "zstd"], "; ".join(errors)


def make_cases(d: Data, out: Path, skopeo_flags: list[str], explain: bool) -> list[Case]:
    q = shlex.quote
    pz_out = out / "pigz-zstd.tar.zst"
    pz_cmd = f"pigz -dc {q(str(d.gz))} | zstd -3 -T2 -q -c > {q(str(pz_out))}"
    dst, dstc, dstc3 = out / "dst", out / "dstc", out / "dstc3"
    conv = Converter(progress=False)  # defaults: 2 MiB frames, level 3, one thread per CPU
    src_ref, dst_ref = f"oci:{d.layout}:{TAG}", f"oci:{dst}:{TAG}"
    sk_name = "zstd:chunked" if "zstd:chunked" in skopeo_flags else "zstd"

    def skopeo(dest: Path, extra: list[str], label: str) -> Case:
        argv = ["skopeo", "copy", "-q", *skopeo_flags, *extra, src_ref, f"oci:{dest}:{TAG}"]
        return Case(f"`skopeo copy`, {sk_name}{label}", shlex.join(argv), lambda: sh(argv), False, [dest])

    cases = [
        Case("`pigz -dc \\| zstd -3 -T2`", pz_cmd, lambda: sh(pz_cmd), False, [pz_out]),
        Case("lazylayer `Converter().convert()`", f"Converter().convert({src_ref!r}, {dst_ref!r})",
             lambda: conv.convert(src_ref, dst_ref), True, [dst]),
        # skopeo's default level for zstd:chunked is 10 in 1.9.3 (its blob is byte-identical to
        # --dest-compress-level 10); level 3 is the like-for-like comparison with the rows above.
        skopeo(dstc, [], " (default level)"),
        skopeo(dstc3, ["--dest-compress-level", "3"], ", `--dest-compress-level 3`"),
    ]
    if explain:
        z_out = out / "zstd-T2.tar.zst"
        z_cmd = f"zstd -3 -T2 -q -c {q(str(d.tar))} > {q(str(z_out))}"
        g_cmd = f"pigz -dc {q(str(d.gz))} > /dev/null"

        def gunzip_only() -> None:
            with open(d.gz, "rb") as f:
                for _ in decompressed_chunks(f):
                    pass

        def writer_only() -> None:
            with open(d.tar, "rb") as f, open(out / "writer.blob", "wb") as o:
                LayerWriter().write(f.read, o)

        cases += [
            Case("`pigz -dc > /dev/null` (gunzip only)", g_cmd, lambda: sh(g_cmd), False, [], True),
            Case("`zstd -3 -T2` of the plain tar (compress only)", z_cmd, lambda: sh(z_cmd), False,
                 [z_out], True),
            Case("lazylayer gunzip only (ISA-L, one thread)",
                 "for _ in lazylayer.format.decompressed_chunks(open(gz)): pass",
                 gunzip_only, True, [], True),
            Case("lazylayer `LayerWriter` on the plain tar (no gunzip)",
                 "LayerWriter().write(open(tar).read, out)", writer_only, True,
                 [out / "writer.blob"], True),
        ]
    return cases


# ----------------------------------------------------------------- report


def fmt_range(vals: list[float]) -> str:
    if len(vals) == 1:
        return ""
    return f" ({min(vals):,.0f}–{max(vals):,.0f})"


def tool_version(*cmd: str) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "n/a"


def libzstd_version() -> str:
    """The version of the libzstd lazylayer's extension loaded (the only shared libzstd in this process)."""
    import ctypes
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libzstd" in line}
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        lib.ZSTD_versionString.restype = ctypes.c_char_p
        return f"libzstd {lib.ZSTD_versionString().decode()}"
    return "libzstd built in"


def environment() -> list[str]:
    ver = package_version
    zstd_cli = tool_version("zstd", "--version").split(" v")[-1].split(",")[0]
    machine = machine_line()
    python = (f"- Python {platform.python_version()}; lazylayer {ver('lazylayer')} ({libzstd_version()}), "
              f"isal {ver('isal')}, zstandard {ver('zstandard')}")
    tools = f"- {tool_version('pigz', '--version')}; zstd CLI {zstd_cli}; {tool_version('skopeo', '--version')}"
    return [machine, python, tools]


@dataclass
class Sizes:
    ours: int
    zstd3: int
    pigz_zstd: int
    skopeo: int
    skopeo3: int


def render(cmd: str, d: Data, cases: list[Case], sizes: Sizes, skopeo_error: str | None,
           verified: str, skopeo_tar: str, load: str) -> str:
    n = d.tar_size
    reps = len(cases[0].wall)
    L = [f"Command: `{cmd}`", ""]
    L += environment()
    data = (f"- Data: a tar of {len(d.paths)} entries of `/usr/*/*` "
            f"(`{d.paths[0]}` … `{d.paths[-1]}`, sorted, `tar --sort=name`): {n:,} B, "
            f"{d.entries:,} members; `pigz -6`: {d.gz_size:,} B ({n / d.gz_size:.2f}x). "
            f"One OCI image, one `tar+gzip` layer.")
    how = (f"- Median of {reps} run{'s' if reps > 1 else ''}, cases interleaved, input in the page cache; "
           f"MB/s = uncompressed tar bytes / 10^6 / wall seconds (range over runs in brackets); cores = "
           f"CPU seconds / wall seconds (children's for tools, this process's for lazylayer); "
           f"other load = the most cores other processes kept busy during any run of the case "
           f"(**disturbed** above {DISTURBED})")
    L += [data, how, f"- Load: {load}", ""]
    L += ["| case | wall s | MB/s | cores | vs `pigz \\| zstd` | other load |",
          "|---|---:|---:|---:|---:|---:|"]
    base = cases[0].median_mbps(n)
    for c in cases:
        name = c.name + (" *(explains)*" if c.explain else "")
        wall = statistics.median(c.wall)
        cores = statistics.median([cpu / w for cpu, w in zip(c.cpu, c.wall)])
        L.append(f"| {name} | {wall:.2f} | {c.median_mbps(n):,.0f}{fmt_range(c.mbps(n))} | "
                 f"{cores:.2f} | {c.median_mbps(n) / base:.2f}x | "
                 f"{max(c.other):.2f}{' **disturbed**' if c.disturbed else ''} |")
    if skopeo_error:
        version = tool_version("skopeo", "--version").split()[-1]
        L += ["", (f"skopeo zstd:chunked: **not supported by Debian's skopeo {version}** "
                   f"({skopeo_error}); the skopeo rows use `--dest-compress-format zstd` instead.")]
    sk_name = "zstd:chunked" if skopeo_error is None else "zstd"
    L += ["", "| output | bytes | vs tar | vs `zstd -3` |", "|---|---:|---:|---:|"]
    for name, size in (("plain `zstd -3 -q -c layer.tar` (1 thread, 1 frame)", sizes.zstd3),
                       (f"lazylayer layer blob ({LAYER_FRAME_SIZE >> 20} MiB frames + TOC + seek table)", sizes.ours),
                       ("`pigz -dc \\| zstd -3 -T2` output", sizes.pigz_zstd),
                       (f"skopeo {sk_name} layer blob, default level", sizes.skopeo),
                       (f"skopeo {sk_name} layer blob, `--dest-compress-level 3`", sizes.skopeo3),
                       ("`pigz -6` input", d.gz_size)):
        L.append(f"| {name} | {size:,} | {size / n:.3f} | {size / sizes.zstd3:.3f}x |")
    L += ["", f"Check (untimed): {verified}. {skopeo_tar}"]
    L += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
    peer, ours, sk, sk3 = cases[:4]
    ratio = ours.median_mbps(n) / peer.median_mbps(n)
    L.append(f"| layer >= 500 MB | {n / MB:,.0f} MB | {'met' if n >= 500 * MB else 'not met'} |")
    L.append(f"| throughput >= 0.8x `pigz -dc \\| zstd -3 -T2` | {ours.median_mbps(n):,.0f} vs "
             f"{peer.median_mbps(n):,.0f} MB/s = {ratio:.2f}x"
             f"{' (disturbed run: see other load)' if ours.disturbed or peer.disturbed else ''} | "
             f"{'met' if ratio >= 0.8 else '**not met**'} |")
    for label, case, size in (("default level", sk, sizes.skopeo), ("level 3", sk3, sizes.skopeo3)):
        L.append(f"| compared with skopeo {sk_name}, {label} | {ours.median_mbps(n):,.0f} vs "
                 f"{case.median_mbps(n):,.0f} MB/s = {ours.median_mbps(n) / case.median_mbps(n):.2f}x; "
                 f"size {sizes.ours / size:.3f}x of skopeo's | (comparison, no threshold) |")
    size_ratio = sizes.ours / sizes.zstd3
    L.append(f"| size <= 1.05x plain `zstd -3` | {sizes.ours:,} vs {sizes.zstd3:,} B = {size_ratio:.3f}x | "
             f"{'met' if size_ratio <= 1.05 else '**not met**'} |")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lazylayer-convert-bench"),
                    help="where the tar, the gzip layer, the layout and the outputs live (default %(default)s)")
    ap.add_argument("--size-mb", type=int, default=None,
                    help="MB (10**6) of /usr to put in the tar, by apparent size (default 600; 64 with --quick)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per case, median reported (default 3; 1 with --quick)")
    ap.add_argument("--rebuild", action="store_true", help="rewrite the tar, gzip layer and layout")
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--no-explain", action="store_true", help="skip the rows that only explain")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    args = ap.parse_args(argv)
    args.size_mb = args.size_mb or (64 if args.quick else 600)
    args.repeat = args.repeat or (1 if args.quick else 3)
    cmd = shlex.join(["python", "benchmarks/convert.py", *sys.argv[1:]])

    for tool in ("tar", "pigz", "zstd", "skopeo", "du"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.2f}; other work will distort the numbers")

    d = prepare_data(args.workdir, args.size_mb, args.rebuild)
    log(f"data: {d.tar} {d.tar_size:,} B, {d.entries:,} members; {d.gz} {d.gz_size:,} B")
    skopeo_flags, skopeo_error = skopeo_format(args.workdir)
    if skopeo_error:
        log(f"skopeo refuses zstd:chunked: {skopeo_error}")

    out = args.workdir / "out"
    out.mkdir(exist_ok=True)
    cases = make_cases(d, out, skopeo_flags, not args.no_explain)
    warm(d.gz)
    warm(d.tar)
    load = OtherLoad()
    for i in range(args.repeat):
        for c in cases:
            c.once()
            log(f"run {i + 1}/{args.repeat}: {c.name}: {c.wall[-1]:.2f} s, "
                f"{d.tar_size / MB / c.wall[-1]:,.0f} MB/s, {c.cpu[-1] / c.wall[-1]:.2f} cores; "
                f"others {c.other[-1]:.2f} cores")
    load_text = load.summary()

    # Untimed: sizes and the correctness check (the last run's outputs are still there).
    ours_blob, ours_diff_id = layer_blob(out / "dst")
    sk_blob, sk_diff_id = layer_blob(out / "dstc")
    sk3_blob, _ = layer_blob(out / "dstc3")
    zstd3 = int(sh(f"zstd -3 -q -c {shlex.quote(str(d.tar))} | wc -c", text=True).stdout)
    sizes = Sizes(ours=ours_blob.stat().st_size, zstd3=zstd3,
                  pigz_zstd=(out / "pigz-zstd.tar.zst").stat().st_size, skopeo=sk_blob.stat().st_size,
                  skopeo3=sk3_blob.stat().st_size)
    got = "sha256:" + sh(f"zstd -d -q -c {shlex.quote(str(ours_blob))} | sha256sum", text=True).stdout.split()[0]
    if got != d.diff_id or ours_diff_id != d.diff_id:
        raise SystemExit(f"our blob does not decompress to the layer's tar: {got}, config "
                         f"{ours_diff_id}, source {d.diff_id}")
    verified = f"`zstd -d -c` of our layer blob hashes to the diff_id {d.diff_id[:19]}… (the exact tar)"
    sk_sha = "sha256:" + sh(f"zstd -d -q -c {shlex.quote(str(sk_blob))} | sha256sum", text=True).stdout.split()[0]
    skopeo_tar = ("skopeo's blob decompresses to the same tar" if sk_sha == d.diff_id else
                  "skopeo's blob does *not* decompress to the same tar (different bytes, "
                  f"{sk_sha[:19]}…)")
    skopeo_tar += (f"; its config's diff_id is {'unchanged' if sk_diff_id == d.diff_id else 'changed'}"
                   f"{' — so it does not match the blob' if (sk_diff_id == d.diff_id) != (sk_sha == d.diff_id) else ''}.")

    report = render(cmd, d, cases, sizes, skopeo_error, verified, skopeo_tar, load_text)
    print(report)
    if args.out:
        args.out.write_text(report)
    for c in cases:
        c.clean()


if __name__ == "__main__":
    main()
