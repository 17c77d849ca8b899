"""The ``lazylayer`` command.

Subcommands (each has ``--help``):

- ``demo``: the main job on an embedded default — packs a directory that every
  machine with Python has (its standard library) into a seekable zstd blob,
  then reads files out of it through a source that counts every compressed
  byte it is asked for, as a network fetch would, and checks each byte.
- ``convert SRC DST``: convert an image to lazy layers (docs/format.md).
- ``compress IN OUT``: write a file (or stdin) in the zstd seekable format.
- ``info FILE``: the seek table of a seekable blob (``--json`` for scripts).
- ``cat FILE``: write a range of a seekable blob's uncompressed data to stdout.

Exit codes: 0 success, 1 a lazylayer error (bad data, failed source), 2 usage.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import sysconfig
import tarfile
import threading
import time
from typing import BinaryIO, Callable, Sequence

from . import errors
from .format import LAYER_FRAME_SIZE
from .progress import Progress
from .seekable import DEFAULT_FRAME_SIZE, BlockCache, SeekableReader, SeekableWriter


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _size(text: str) -> int:
    """Parse 1048576, 1M, 64K, 1MiB, 2G."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        return int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


# --------------------------------------------------------------------- convert


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import Converter
    from .oci import INDEX_TYPES

    conv = Converter(frame_size=args.frame_size, level=args.level, threads=args.threads,
                     progress=False if args.quiet else None)
    result = conv.convert(args.source, args.destination)
    summary = {
        "destination": args.destination,
        "digest": result.root["digest"],
        "media_type": result.root["mediaType"],
        "layers_converted": len(result.layers),
        "layers_copied": result.copied_layers,
        "layers": [{"digest": i.digest, "size": i.size, "diff_id": i.diff_id, "tar_size": i.tar_size,
                    "frames": i.frames, "entries": i.entries, "toc_digest": i.toc_digest} for i in result.layers],
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        for i in result.layers:
            print(f"layer {i.digest[:19]}: {_human(i.tar_size)} tar -> {_human(i.size)} "
                  f"({i.size / max(i.tar_size, 1):.1%}), {i.frames} frames, {i.entries} entries")
        kind = "index" if result.root["mediaType"] in INDEX_TYPES else "manifest"
        print(f"{args.destination}: {kind} {result.root['digest']}")
    return 0


# --------------------------------------------------------------------- compress


def cmd_compress(args: argparse.Namespace) -> int:
    src: BinaryIO = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    total = None if args.input == "-" else os.fstat(src.fileno()).st_size
    progress = Progress(total, "compress", None if not args.quiet else False)
    tmp = args.output + ".part"
    try:
        with SeekableWriter(tmp, frame_size=args.frame_size, level=args.level,
                            checksum=not args.no_checksum, threads=args.threads) as w:
            while chunk := src.read(8 << 20):
                w.write(chunk)
                progress.update(len(chunk))
        os.replace(tmp, args.output)  # never leave a half-written file under the real name
    finally:
        progress.close()
        if src is not sys.stdin.buffer:
            src.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    if not args.quiet:
        out = os.path.getsize(args.output)
        print(f"{args.output}: {_human(progress.done)} -> {_human(out)} "
              f"({out / max(progress.done, 1):.1%}) in frames of {_human(args.frame_size)}",
              file=sys.stderr)
    return 0


# ------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    with SeekableReader(args.file, cache=None, threads=1) as r:
        frames = [r.frame(i) for i in range(r.frames)]
        data = [f for f in frames if f.size]
        info = {
            "file": args.file,
            "compressed_size": r.blob_size,
            "uncompressed_size": r.size,
            "frames": r.frames,
            "data_frames": len(data),
            "skippable_or_empty_frames": r.frames - len(data),
            "checksums": r.has_checksums,
            "largest_frame": max((f.size for f in data), default=0),
            "ratio": r.blob_size / r.size if r.size else None,
        }
        if args.frames:
            info["frame_table"] = [f._asdict() for f in frames]
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for k, v in info.items():
            if k != "frame_table":
                print(f"{k:28} {v}")
        for i, f in enumerate(info.get("frame_table", [])):
            print(f"frame {i:6}: data {f['offset']}+{f['size']}  blob {f['compressed_offset']}+"
                  f"{f['compressed_size']}  checksum {f['checksum']}")
    return 0


# -------------------------------------------------------------------------- cat


def cmd_cat(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with SeekableReader(args.file, threads=args.threads) as r:
        end = r.size if args.length is None else min(r.size, args.offset + args.length)
        pos = args.offset
        buf = bytearray(8 << 20)
        while pos < end:
            view = memoryview(buf)[: min(len(buf), end - pos)]
            n = r.readinto(view, pos)
            if n == 0:
                break
            out.write(view[:n])
            pos += n
    out.flush()
    return 0


# ------------------------------------------------------------------------- demo


def _pack_tree(root: str, limit: int) -> tuple[bytes, list[tarfile.TarInfo]]:
    """A tar of up to `limit` bytes of regular files under root, in memory."""
    buf = io.BytesIO()
    members = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, files in os.walk(root):
            dirnames.sort()
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    tar.add(path, arcname=os.path.relpath(path, root), recursive=False)
                except OSError:
                    continue
                if buf.tell() > limit:
                    break
            if buf.tell() > limit:
                break
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    return data, members


def cmd_demo(args: argparse.Namespace) -> int:
    root = args.directory or sysconfig.get_paths()["stdlib"]
    print(f"1. packing {root} (up to {_human(args.limit)}) into a tar ...")
    t0 = time.perf_counter()
    tar, members = _pack_tree(root, args.limit)
    print(f"   {len(members)} files, {_human(len(tar))}")

    print(f"2. compressing it in the zstd seekable format, frames of {_human(args.frame_size)} ...")
    out = io.BytesIO()
    t = time.perf_counter()
    with SeekableWriter(out, frame_size=args.frame_size) as w:
        w.write(tar)
    blob = out.getvalue()
    dt = time.perf_counter() - t
    print(f"   {_human(len(blob))} ({len(blob) / len(tar):.1%} of the tar), {w.frames} frames, "
          f"{len(tar) / dt / 1e6:.0f} MB/s")

    fetched = [0, 0]  # bytes, requests
    lock = threading.Lock()

    def remote(offset: int, size: int) -> bytes:
        """Stands in for an HTTP range request: counts what is asked for."""
        with lock:
            fetched[0] += size
            fetched[1] += 1
        return blob[offset:offset + size]

    rng = random.Random(args.seed)
    picks = rng.sample(members, min(args.files, len(members)))
    print(f"3. reading {len(picks)} random files through a counting 'remote' source ...")
    cache = BlockCache(64 << 20)
    t = time.perf_counter()
    read_bytes = 0
    with SeekableReader(remote, blob_size=len(blob), cache=cache) as r:
        for m in picks:
            got = r.pread(m.size, m.offset_data)
            if got != tar[m.offset_data:m.offset_data + m.size]:
                raise errors.IntegrityError(f"demo: wrong bytes for {m.name}")
            read_bytes += m.size
    dt = time.perf_counter() - t
    s = cache.stats()
    print(f"   {_human(read_bytes)} of file data, every byte checked against the tar, in {dt * 1e3:.0f} ms")
    print(f"   fetched {_human(fetched[0])} in {fetched[1]} range requests: "
          f"{fetched[0] / len(blob):.1%} of the blob (a full pull moves 100%)")
    print(f"   cache: {s.hits} hits, {s.misses} misses, {_human(s.peak_bytes)} peak of {_human(s.budget)}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


# ------------------------------------------------------------------------- main


def _compression_options(p: argparse.ArgumentParser, frame_size: int) -> None:
    p.add_argument("--frame-size", type=_size, default=frame_size,
                   help=f"uncompressed bytes per frame (default {frame_size >> 20}M)")
    p.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    p.add_argument("--threads", type=int, default=None, help="compression threads (default: one per CPU)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lazylayer", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="pack, compress and lazily read an embedded default tree")
    d.add_argument("--directory", help="tree to pack (default: Python's standard library)")
    d.add_argument("--limit", type=_size, default=_size("64M"), help="pack at most this much (default 64M)")
    d.add_argument("--files", type=int, default=40, help="files to read back (default 40)")
    d.add_argument("--frame-size", type=_size, default=DEFAULT_FRAME_SIZE, help="frame size (default 1M)")
    d.add_argument("--seed", type=int, default=1)
    d.set_defaults(func=cmd_demo)

    v = sub.add_parser("convert", help="convert an image to lazy layers",
                       description="Convert an image to lazy layers. SRC: oci:DIR[:TAG] or docker-archive:FILE[:REPO:TAG]; "
                                   "DST: oci:DIR[:TAG]. Every platform of a multi-platform index is converted.")
    v.add_argument("source", metavar="SRC")
    v.add_argument("destination", metavar="DST")
    _compression_options(v, LAYER_FRAME_SIZE)
    v.add_argument("--json", action="store_true", help="print a machine-readable summary")
    v.add_argument("-q", "--quiet", action="store_true")
    v.set_defaults(func=cmd_convert)

    c = sub.add_parser("compress", help="write a file in the zstd seekable format")
    c.add_argument("input", help="file to compress, or - for stdin")
    c.add_argument("output")
    _compression_options(c, DEFAULT_FRAME_SIZE)
    c.add_argument("--no-checksum", action="store_true", help="omit per-frame checksums from the seek table")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_compress)

    i = sub.add_parser("info", help="show the seek table of a seekable zstd file")
    i.add_argument("file")
    i.add_argument("--frames", action="store_true", help="list every frame")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    k = sub.add_parser("cat", help="write uncompressed bytes of a seekable zstd file to stdout")
    k.add_argument("file")
    k.add_argument("--offset", type=_size, default=0)
    k.add_argument("--length", type=_size, default=None)
    k.add_argument("--threads", type=int, default=None)
    k.set_defaults(func=cmd_cat)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except errors.LazyLayerError as exc:
        print(f"lazylayer: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # pragma: no cover - e.g. `lazylayer cat x | head`
        return 0
    except OSError as exc:
        print(f"lazylayer: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
