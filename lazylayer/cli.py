"""The ``lazylayer`` command.

Subcommands (each has ``--help``):

- ``demo``: the main job on an embedded default — packs a directory that every
  machine with Python has (its standard library) into a seekable zstd blob,
  then reads files out of it through a source that counts every compressed
  byte it is asked for, as a network fetch would, and checks each byte.
- ``convert SRC DST``: convert an image to lazy layers (docs/format.md); SRC and
  DST may be registries (``docker://HOST/REPO:TAG``).
- ``index IMAGE``: index the image's plain gzip layers once (checked against
  their digests) so that they are read lazily on this machine from then on.
- ``inspect IMAGE``: an image's manifest for one platform, its layers and
  whether they are lazy (``--raw`` prints the manifest itself).
- ``mount IMAGE MOUNTPOINT``: a read-only FUSE mount of the image's merged
  root, fetched lazily (docs/mount.md); in the background once it is ready,
  unless ``--foreground``.  ``umount MOUNTPOINT`` removes it.
- ``ls IMAGE [PATH]``: list a directory of the image (``-l``, ``-R``, ``--json``).
- ``compress IN OUT``: write a file (or stdin) in the zstd seekable format.
- ``info FILE``: the seek table of a seekable blob (``--json`` for scripts).
- ``cat IMAGE PATH``: write a file of an image to stdout, fetching only its
  frames.  ``cat FILE`` (one argument): a range of a seekable blob's
  uncompressed data (FILE may be any URL: ``https://``, ``s3://``...).
- ``cache info|trim|clear``: the on-disk frame cache (docs/cache.md): its
  size and limit, evicting least recently used entries, emptying it.

IMAGE is ``docker://HOST/REPO:TAG`` (or ``@sha256:...``), ``oci:DIR[:TAG]`` or
``docker-archive:FILE``.  Commands that open an image keep fetched frames in
the disk cache (``--cache-dir``, default ``$LAZYLAYER_CACHE_DIR`` or
``~/.cache/lazylayer``).

Exit codes: 0 success, 1 a lazylayer error (bad data, failed source, a path
that is not in the image), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Sequence

from . import errors
from .core import DEFAULT_FRAME_SIZE, SeekableReader, SeekableWriter
from .format import LAYER_FRAME_SIZE
from .progress import Progress
from .units import human_size as _human
from .units import parse_size

if TYPE_CHECKING:
    from .image import Image


def _size(text: str) -> int:
    """An argparse type: :func:`lazylayer.units.parse_size`, with argparse's error."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --------------------------------------------------------------------- convert


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import Converter
    from .oci import INDEX_TYPES

    plan = None
    if args.prefetch:
        from .prefetch import load_plan

        plan = load_plan(args.prefetch)
    conv = Converter(frame_size=args.frame_size, level=args.level, threads=args.threads,
                     progress=False if args.quiet else None, prefetch=plan,
                     source_registry=_registry_config(args, args.src_creds or args.creds),
                     dest_registry=_registry_config(args, args.dest_creds or args.creds))
    result = conv.convert(args.source, args.destination)
    summary = {
        "destination": args.destination,
        "digest": result.root["digest"],
        "media_type": result.root["mediaType"],
        "layers_converted": len(result.layers),
        "layers_copied": result.copied_layers,
        "layers": [{"digest": c.info.digest, "size": c.info.size, "diff_id": c.info.diff_id,
                    "tar_size": c.info.tar_size, "frames": c.info.frames, "entries": c.info.entries,
                    "toc_digest": c.info.toc_digest, "source_digest": c.source.get("digest"),
                    "source_size": c.source.get("size"), "source_media_type": c.source.get("mediaType"),
                    "seconds": round(c.seconds, 3)} for c in result.converted],
        "seconds": round(result.seconds, 3),
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        for c in result.converted:
            print(f"layer {str(c.source.get('digest', '?'))[:19]}…: {c.summary()}")
        if result.copied_layers:
            print(f"{result.copied_layers} layer(s) copied as they were (lazy already, or not a filesystem layer)")
        kind = "index" if result.root["mediaType"] in INDEX_TYPES else "manifest"
        print(f"{args.destination}: {kind} {result.root['digest']}, in {result.seconds:.1f} s")
    return 0


# ------------------------------------------------------------------------ index


def cmd_index(args: argparse.Namespace) -> int:
    from .image import DiskCache
    from .index import index_image

    result = index_image(args.image, platform=args.platform, registry=_registry_config(args, args.creds),
                         cache=DiskCache(args.cache_dir), span=args.span, progress=False if args.quiet else None,
                         attach=args.attach)
    if args.json:
        json.dump({"manifest": result.manifest, "skipped": result.skipped, "seconds": round(result.seconds, 3),
                   "artifact": result.artifact,
                   "layers": [dict(dataclasses.asdict(x), seconds=round(x.seconds, 3)) for x in result.layers]},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        for x in result.layers:
            how = f"indexed in {x.seconds:.1f} s" if x.built else "indexed before"
            print(f"layer {x.digest[:19]}…: {_human(x.size)} gzip, {x.entries} entries, {x.spans} spans: {how}")
        if not result.layers:
            print(f"{args.image}: no plain gzip layer to index ({result.skipped} other layers)")
        elif result.skipped:
            print(f"{result.skipped} other layer(s) left as they are (not plain gzip)")
        if result.artifact is not None:
            print(f"attached to {result.manifest} as {result.artifact['digest']}")
    return 0


# --------------------------------------------------------------------- inspect


def cmd_inspect(args: argparse.Namespace) -> int:
    from . import oci
    from .format import is_lazy_layer
    from .registry import open_source

    source = open_source(args.reference, _registry_config(args, args.creds))
    try:
        root, root_data = source.root()
        if args.raw and not args.platform:
            sys.stdout.write(root_data.decode() + "\n")
            return 0
        img = oci.select_image(source, args.platform)
    finally:
        source.close()
    if args.raw:
        sys.stdout.write(json.dumps(img.manifest, indent=2) + "\n")
        return 0
    config = oci.parse_json(img.config, "image config")
    layers = [{"digest": layer.get("digest"), "size": layer.get("size"), "media_type": layer.get("mediaType"),
               "lazy": is_lazy_layer(layer)} for layer in img.manifest["layers"]]
    info = {"reference": args.reference, "digest": img.manifest_descriptor["digest"],
            "index": root["digest"] if root["digest"] != img.manifest_descriptor["digest"] else None,
            "platform": f"{config.get('os', '?')}/{config.get('architecture', '?')}"
                        + (f"/{config['variant']}" if config.get("variant") else ""),
            "size": sum(int(x["size"] or 0) for x in layers), "layers": layers}
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{info['reference']}: manifest {info['digest']} ({info['platform']})")
    if info["index"]:
        print(f"  from index {info['index']}")
    for x in layers:
        print(f"  layer {x['digest']}  {_human(int(x['size'] or 0)):>10}  {'lazy' if x['lazy'] else x['media_type']}")
    return 0


def _registry_options(p: argparse.ArgumentParser, directions: bool = False) -> None:
    """skopeo's spelling of the registry options."""
    g = p.add_argument_group("registry options (docker:// references)")
    g.add_argument("--creds", metavar="USER[:PASSWORD]", help="credentials (asks for the password if omitted)")
    if directions:
        g.add_argument("--src-creds", metavar="USER[:PASSWORD]", help="credentials for SRC only")
        g.add_argument("--dest-creds", metavar="USER[:PASSWORD]", help="credentials for DST only")
    g.add_argument("--authfile", action="append", metavar="FILE",
                   help="auth file to use instead of docker's and podman's; repeatable")
    g.add_argument("--tls-verify", type=_boolean, default=True, metavar="BOOL",
                   help="verify TLS certificates; false also allows plain HTTP (default true; "
                        "loopback registries use HTTP anyway)")
    g.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="a mirror (pull-through cache) to try before the registry; repeatable, tried in order")


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _registry_config(args: argparse.Namespace, creds: str | None) -> object:
    from .registry import RegistryConfig
    from .registry.auth import Credentials

    credentials = None
    if creds:
        credentials = Credentials.parse(creds)
        if ":" not in creds:
            import getpass

            credentials = Credentials(credentials.username, getpass.getpass(f"password for {credentials.username}: "))
    return RegistryConfig(credentials=credentials, auth_files=args.authfile, tls_verify=args.tls_verify,
                          mirrors=tuple(args.mirror))


# --------------------------------------------------------------------- compress


def cmd_compress(args: argparse.Namespace) -> int:
    src: BinaryIO = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    total = None if args.input == "-" else os.fstat(src.fileno()).st_size
    progress = Progress(total, f"compressing {args.input}", None if not args.quiet else False)
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
    if args.path is not None:
        return _cat_image_file(args)
    out = sys.stdout.buffer
    if "://" in args.source:
        from .remote import open_blob

        blob = open_blob(args.source)
        reader = SeekableReader(blob, blob_size=blob.size, threads=args.threads, name=args.source)
    else:
        reader = SeekableReader(args.source, threads=args.threads)
    with reader as r:
        end = r.size if args.length is None else min(r.size, args.offset + args.length)
        _copy_out(r.readinto, args.offset, end, out)
    return 0


def _copy_out(readinto: Callable[[memoryview, int], int], pos: int, end: int, out: BinaryIO) -> None:
    """Write bytes pos..end, read by ``readinto(view, offset)``, to ``out`` in 8 MiB pieces."""
    buf = bytearray(min(8 << 20, max(end - pos, 1)))
    while pos < end:
        view = memoryview(buf)[: min(len(buf), end - pos)]
        n = readinto(view, pos)
        if n == 0:
            break
        out.write(view[:n])
        pos += n
    out.flush()


def _cat_image_file(args: argparse.Namespace) -> int:
    args.image = args.source
    with _open_image(args) as img:
        node = img.tree.resolve(args.path)
        if node.kind != "reg":
            raise errors.LazyLayerError(f"{args.path}: not a regular file ({node.kind})")
        size = node.inode.size
        end = size if args.length is None else min(size, args.offset + args.length)
        _copy_out(lambda view, off: img.readinto(node, view, off), args.offset, end, sys.stdout.buffer)
    return 0


# --------------------------------------------------------------------------- ls


def cmd_ls(args: argparse.Namespace) -> int:
    import stat as st

    with _open_image(args) as img:
        tree = img.tree
        asked = args.path.strip("/")
        link = tree.resolve(args.path, follow=False)  # like GNU ls: a symlink is shown as itself...
        top = link
        if link.kind == "symlink" and not args.directory:
            try:  # ...unless it leads to a directory whose entries are asked for
                target = tree.resolve(args.path, follow=True)
                if target.children is not None:
                    top = target
            except OSError:  # a dangling link or a loop: show the link
                pass

        def named(path: str) -> str:
            """An entry's name as ``ImageFileSystem.ls`` gives it: no leading slash, under PATH as given
            (even when a symlink led elsewhere)."""
            if top.path == asked or not (path == top.path or path.startswith(top.path + "/") or not top.path):
                return path
            rest = path[len(top.path):].lstrip("/")
            return f"{asked}/{rest}" if asked and rest else asked or rest

        groups: list[tuple[str | None, list[Any]]]
        if top.children is None or args.directory:
            groups = [(None, [top])]
        elif args.recursive:
            groups = [(named(d.path), kids) for d, kids in tree.walk(top)]
        else:
            groups = [(asked, [top.children[k] for k in sorted(top.children)])]
        if args.json:
            out = []
            for where, nodes in groups:
                for n in nodes:
                    info = n.info()  # "name" as ImageFileSystem.info (one entry) and .ls (a listing) give it
                    if where is not None:
                        info["name"] = named(n.path)
                    if "xattrs" in info:
                        info["xattrs"] = {k: v.decode("latin-1") for k, v in info["xattrs"].items()}
                    out.append(info)
            json.dump(out, sys.stdout, indent=1)
            sys.stdout.write("\n")
            return 0
        for i, (where, nodes) in enumerate(groups):
            if args.recursive and where is not None:
                print(("\n" if i else "") + f"/{where}:")
            for n in nodes:
                name = "/" + n.path if where is None else n.path.rpartition("/")[2]
                if not args.long:
                    print(name)
                    continue
                ino = n.inode
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(ino.mtime))
                size = f"{os.major(ino.rdev)}, {os.minor(ino.rdev)}" if ino.kind in ("char", "block") else \
                    str(ino.size if ino.kind != "dir" else 0)
                link_to = f" -> {ino.linkname}" if ino.kind == "symlink" else ""
                print(f"{st.filemode(ino.mode)} {ino.nlink:3} {ino.uid:5} {ino.gid:5} {size:>10} {when} "
                      f"{name}{link_to}")
    return 0


def _image_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that opens an image."""
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="which image of a multi-platform index (default: this machine's)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="disk cache of fetched frames (default $LAZYLAYER_CACHE_DIR or ~/.cache/lazylayer)")
    p.add_argument("--no-cache", action="store_true", help="keep nothing on disk")
    p.add_argument("--gzip-indexes", choices=("local", "attached", "off"), default="local",
                   help="which indexes make plain gzip layers lazy: local (default) those `lazylayer index` built "
                        "here; attached also those attached to the image, checked against the layer in the "
                        "background (reads before the check ends are unchecked); off none")
    _registry_options(p)


def _prefetch_options(p: argparse.ArgumentParser) -> None:
    """How a mount prefetches (docs/prefetch.md)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prefetch", metavar="PLAN", help="prefetch with this plan file (default: the plan attached "
                                                       "to the image, else the plans in its layers)")
    g.add_argument("--no-prefetch", action="store_true", help="no plan")
    p.add_argument("--fill", action="store_true", help="after the plan, fetch the rest of the image in the "
                                                      "background (into the disk cache)")
    p.add_argument("--fill-rate", type=_size, default=None, metavar="RATE",
                   help="most bytes/s the fill may use, e.g. 20M (default: no limit)")
    p.add_argument("--no-readahead", action="store_true", help="no read-ahead of sequential reads")


def _open_image(args: argparse.Namespace, chunk_runs: bool = False) -> Image:
    """The image of an image command (a mount's prefetch runs in its fetcher: lazylayer.mount.fetcher;
    ``chunk_runs`` for the mounts: Image's)."""
    from .image import DiskCache, Image

    cache = None if args.no_cache else DiskCache(args.cache_dir)
    return Image(args.image, platform=args.platform, registry=_registry_config(args, args.creds), cache=cache,
                 gzip_indexes=args.gzip_indexes, chunk_runs=chunk_runs)


# ------------------------------------------------------------------------ mount


def cmd_mount(args: argparse.Namespace) -> int:
    from .mount import MountError, daemon, is_mounted

    mnt = args.mountpoint
    if not os.path.isdir(mnt):
        print(f"lazylayer: {mnt}: mount point is not a directory", file=sys.stderr)
        return 2
    if is_mounted(mnt):
        raise MountError(f"{mnt}: a lazylayer mount is there already (lazylayer umount {mnt})")
    opts = daemon.ServeOptions(mnt, label=args.image, threads=not args.single_thread, allow_other=args.allow_other,
                               debug=args.debug, read_ahead=args.read_ahead, verbose=args.verbose,
                               prefetch=None if args.no_prefetch else args.prefetch or "auto", fill=args.fill,
                               fill_rate=args.fill_rate, readahead=not args.no_readahead,
                               passthrough=args.passthrough, backend=args.backend)

    def serve(ready_fd: int | None = None) -> int:
        # The mount's fetcher process runs the prefetcher (it sees the misses read-ahead follows).
        return _run(lambda a: daemon.run(lambda: _open_image(a, chunk_runs=True), opts, ready_fd), args)

    if args.foreground:
        return serve()
    code = daemon.spawn(serve, mnt, log_path=args.log, label=args.image, quiet=args.quiet)
    # The daemon serves the mount now and this process is done: leave without the interpreter's
    # teardown, which freed what the imports loaded (aiohttp's TLS contexts above all) in ~40 ms,
    # a sixth of the command (docs/benchmarks.md).  No thread runs here (spawn checks) and
    # nothing is buffered but stdio.  So: never call the mount command in-process.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_record(args: argparse.Namespace) -> int:
    from .prefetch import attach
    from .record import record

    argv = args.argv
    if not argv:
        print("lazylayer record: give the command after --, e.g. lazylayer record IMAGE -- python3 -c 'import x'",
              file=sys.stderr)
        return 2
    with _open_image(args, chunk_runs=True) as img:  # (it runs the command in a mount)
        result = record(img, argv, timeout=args.timeout, overlay=not args.bare)
        plan = result.plan
        ended = f"exited {result.returncode}" if result.returncode is not None else \
            f"was stopped at the {args.timeout:g} s time limit"
        if args.output:
            plan.save(args.output)
            where = args.output
        else:
            desc = attach(img, plan)
            where = f"{args.image} (artifact {desc['digest']})"
        if result.returncode:
            print(f"lazylayer record: warning: the command {ended}; the plan records what it read anyway",
                  file=sys.stderr)
        if not args.quiet:
            print(f"lazylayer record: the command {ended} after {result.seconds:.2f} s; plan: {plan.summary()}; "
                  f"saved to {where}", file=sys.stderr)
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from .mount import unmount

    pid = unmount(args.mountpoint, timeout=args.timeout, lazy=args.lazy)
    if pid is not None:  # lazily detached while still in use: not a failure
        print(f"detached {args.mountpoint}; the daemon (pid {pid}) exits when the last process using it leaves")
    return 0


# ------------------------------------------------------------------------ cache


def cmd_cache(args: argparse.Namespace) -> int:
    try:
        return _cache_action(args)
    except ValueError as exc:  # a bad LAZYLAYER_CACHE_MAX or a negative size: usage errors
        print(f"lazylayer: {exc}", file=sys.stderr)
        return 2


def _cache_action(args: argparse.Namespace) -> int:
    from .image import (
        DiskCache,  # here: the commands that need no cache load no HTTP stack
    )

    cache = DiskCache(args.cache_dir, create=False)  # looking at a cache never makes one
    if args.action == "trim":
        before = cache.usage().bytes
        freed = cache.trim(args.max_size)
        after = cache.usage().bytes
        target = f"{_human(args.max_size)}" if args.max_size is not None else \
            f"the limit, {_human(cache.max_bytes)}"
        print(f"freed {_human(freed)} ({freed} bytes): {_human(before)} -> {_human(after)}, trimmed to {target}")
    elif args.action == "clear":
        freed = cache.clear()
        left = cache.usage()
        print(f"freed {_human(freed)} ({freed} bytes)"
              + (f"; {left.entries + left.files} in use, kept ({_human(left.bytes)})" if left.bytes else ""))
    else:
        usage = cache.usage()
        if args.json:
            json.dump(dataclasses.asdict(usage), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(f"{'path':8} {usage.path}" + ("" if os.path.isdir(usage.path) else " (does not exist yet)"))
            print(f"{'used':8} {_human(usage.bytes)} ({usage.bytes} bytes, {usage.bytes / max(usage.max_bytes, 1):.1%})")
            print(f"{'limit':8} {_human(usage.max_bytes)} ({usage.max_bytes} bytes)")
            print(f"{'entries':8} {usage.entries}")
            print(f"{'files':8} {usage.files}")
    return 0


# ------------------------------------------------------------------------- main


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args.directory, args.limit, args.files, args.frame_size, args.seed)


def _compression_options(p: argparse.ArgumentParser, frame_size: int) -> None:
    p.add_argument("--frame-size", type=_size, default=frame_size, metavar="SIZE",
                   help=f"uncompressed bytes per frame (default {frame_size >> 20}M)")
    p.add_argument("--level", type=int, default=3, metavar="N", help="zstd level (default 3)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="compression threads (default: one per CPU)")


_DESCRIPTION = """\
Read container images lazily: mount them, list and read their files, and
convert them to lazy layers."""

_EPILOG = """\
IMAGE is docker://HOST/REPO:TAG (or @sha256:DIGEST), oci:DIR[:TAG] or
docker-archive:FILE. Commands that open an image keep fetched frames in the
disk cache (--cache-dir, default $LAZYLAYER_CACHE_DIR or ~/.cache/lazylayer).

Examples:
  lazylayer demo
  lazylayer convert oci:./app:1 docker://registry.example/app:1-lazy
  lazylayer ls -l docker://registry.example/app:1-lazy /etc
  lazylayer mount docker://registry.example/app:1-lazy /mnt/app

Exit codes: 0 success; 1 a lazylayer error (bad data, a failed source or
mount, a path that is not in the image); 2 usage (bad arguments).
"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="lazylayer", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"lazylayer {__version__}",
                   help="print lazylayer's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands",
                           help="one of these (lazylayer COMMAND --help tells more)")

    d = sub.add_parser("demo", help="pack, compress and lazily read an embedded default tree",
                       description="Pack a directory every machine with Python has (its standard library) "
                                   "into a tar, compress it in the seekable zstd format, then read random files "
                                   "back through a source that counts every compressed byte asked for, as a "
                                   "network fetch would, checking each byte. No network, no service.")
    d.add_argument("--directory", metavar="DIR", help="tree to pack (default: Python's standard library)")
    d.add_argument("--limit", type=_size, default=_size("64M"), metavar="SIZE",
                   help="pack at most this much (default 64M)")
    d.add_argument("--files", type=int, default=40, metavar="N", help="files to read back (default 40)")
    d.add_argument("--frame-size", type=_size, default=DEFAULT_FRAME_SIZE, metavar="SIZE",
                   help="uncompressed bytes per frame (default 1M)")
    d.add_argument("--seed", type=int, default=1, metavar="N",
                   help="seed of the random choice of files to read back (default 1)")
    d.set_defaults(func=cmd_demo)

    v = sub.add_parser("convert", help="convert an image to lazy layers",
                       description="Convert an image to lazy layers. SRC: oci:DIR[:TAG], docker-archive:FILE[:REPO:TAG] "
                                   "or docker://HOST/REPO[:TAG|@DIGEST]; DST: oci:DIR[:TAG] or docker://HOST/REPO[:TAG]. "
                                   "Every platform of a multi-platform index is converted.")
    v.add_argument("source", metavar="SRC", help="the image to convert")
    v.add_argument("destination", metavar="DST", help="where to write the converted image")
    _compression_options(v, LAYER_FRAME_SIZE)
    v.add_argument("--prefetch", metavar="PLAN", help="a plan file from `lazylayer record -o`: its ranges go "
                                                         "into the TOCs of the layers it covers")
    v.add_argument("--json", action="store_true", help="print a machine-readable summary")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    _registry_options(v, directions=True)
    v.set_defaults(func=cmd_convert)

    x = sub.add_parser("index", help="make an image's gzip layers lazy, without rebuilding it",
                       description="Read each plain gzip layer of IMAGE once, check it against its digest and "
                                   "keep a seekable index of it (inflate checkpoints, its files, a sha256 per "
                                   "span) in the disk cache: from then on mounts, lazylayer:// and ls read the "
                                   "layer lazily on this machine, whatever image it is in (docs/filesystem.md).")
    x.add_argument("image", metavar="IMAGE", help="docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG]")
    x.add_argument("--span", type=_size, default=None, metavar="SIZE",
                   help="uncompressed bytes between checkpoints (default 2M): what one miss fetches")
    x.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="which image of a multi-platform index (default: this machine's)")
    x.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="the disk cache to keep the index in (default $LAZYLAYER_CACHE_DIR or ~/.cache/lazylayer)")
    x.add_argument("--attach", action="store_true",
                   help="also store the indexes next to the image (an OCI artifact referring to it), for other "
                        "machines to use with --gzip-indexes attached")
    x.add_argument("--json", action="store_true", help="print a machine-readable summary")
    x.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    _registry_options(x)
    x.set_defaults(func=cmd_index)

    n = sub.add_parser("inspect", help="show an image's manifest and layers",
                       description="Show the manifest an image reference means on one platform. "
                                   "REF: docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG] or docker-archive:FILE.")
    n.add_argument("reference", metavar="REF", help="the image")
    n.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index "
                                                                    "(default: this machine's)")
    n.add_argument("--raw", action="store_true", help="print the manifest (or, without --platform, the index) as stored")
    n.add_argument("--json", action="store_true", help="machine-readable output")
    _registry_options(n)
    n.set_defaults(func=cmd_inspect)

    c = sub.add_parser("compress", help="write a file in the zstd seekable format",
                       description="Compress IN (a file, or - for stdin) into OUT in the zstd seekable format: "
                                   "independent frames and a seek table, so any range can be read back "
                                   "without decompressing what comes before it. Any zstd tool can decompress "
                                   "OUT. OUT appears only once complete.")
    c.add_argument("input", metavar="IN", help="file to compress, or - for stdin")
    c.add_argument("output", metavar="OUT", help="the seekable zstd file to write")
    _compression_options(c, DEFAULT_FRAME_SIZE)
    c.add_argument("--no-checksum", action="store_true", help="omit per-frame checksums from the seek table")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    c.set_defaults(func=cmd_compress)

    i = sub.add_parser("info", help="show the seek table of a seekable zstd file",
                       description="Show FILE's seek table: sizes, frames, checksums, the compression ratio "
                                   "(--frames: every frame).")
    i.add_argument("file", metavar="FILE", help="a seekable zstd file")
    i.add_argument("--frames", action="store_true", help="list every frame")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    k = sub.add_parser("cat", help="write a file of an image (or a range of a seekable zstd file) to stdout",
                       description="lazylayer cat IMAGE PATH: a file of an image, fetching only its frames. "
                                   "lazylayer cat FILE: the uncompressed bytes of a seekable zstd file "
                                   "(a path or any fsspec URL).")
    k.add_argument("source", metavar="IMAGE|FILE", help="an image, or a seekable zstd file (path or URL)")
    k.add_argument("path", nargs="?", metavar="PATH", help="a file in the image (symlinks are followed)")
    k.add_argument("--offset", type=_size, default=0, metavar="N", help="start N bytes in, e.g. 4K (default 0)")
    k.add_argument("--length", type=_size, default=None, metavar="N",
                   help="write at most N bytes, e.g. 1M (default: to the end)")
    k.add_argument("--threads", type=int, default=None, metavar="N", help="decoding threads (seekable files)")
    _image_options(k)
    k.set_defaults(func=cmd_cat)

    ls = sub.add_parser("ls", help="list a directory of an image",
                        description="List PATH (default: the root) of IMAGE's merged tree; only the TOCs are "
                                    "fetched.")
    ls.add_argument("image", metavar="IMAGE", help="the image")
    ls.add_argument("path", nargs="?", default="/", metavar="PATH",
                    help="a directory (a symlink to one is followed) or any other entry (default /)")
    ls.add_argument("-l", "--long", action="store_true", help="mode, links, owner, size, mtime (UTC), link target")
    ls.add_argument("-R", "--recursive", action="store_true", help="every directory below PATH too")
    ls.add_argument("-d", "--directory", action="store_true",
                    help="PATH itself, not its entries (a symlink is shown as itself)")
    ls.add_argument("--json", action="store_true", help="one info dict per entry (as ImageFileSystem.info)")
    _image_options(ls)
    ls.set_defaults(func=cmd_ls)

    m = sub.add_parser("mount", help="mount an image read-only with FUSE, fetched lazily",
                       description="Mount IMAGE's merged root read-only at MOUNTPOINT. Files are fetched when "
                                   "read. Returns once the mount is ready, leaving a daemon that serves it "
                                   "(--foreground: serve in this process, Ctrl-C unmounts).")
    m.add_argument("image", metavar="IMAGE", help="the image")
    m.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    m.add_argument("--log", metavar="FILE", help="append the background daemon's log to FILE (default: a log of "
                                                  "this mount only, next to its pid file; see docs/mount.md)")
    m.add_argument("--allow-other", action="store_true", help="let other users see the mount (needs root or "
                                                               "user_allow_other in /etc/fuse.conf)")
    m.add_argument("--read-ahead", type=_size, default=None, metavar="SIZE",
                   help="the kernel's read-ahead for this mount (root only; kernel default 128K)")
    m.add_argument("--single-thread", action="store_true", help="one FUSE server thread instead of two")
    m.add_argument("--passthrough", action="store_true",
                   help="FUSE passthrough for files of 1 MiB or more once their frames are cached: decoded once "
                        "into the disk cache, then read by the kernel itself (Linux >= 6.9, root; docs/mount.md)")
    m.add_argument("--backend", choices=("fuse", "erofs", "auto"), default="fuse",
                   help="fuse (default), erofs: the kernel serves the image as EROFS and this daemon fills its "
                        "data on demand through fanotify (Linux >= 6.14, root, cache on ext4/xfs/btrfs), auto: "
                        "erofs where allowed, else fuse (the log says which); docs/mount.md")
    m.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    m.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more than the mount and unmount lines (with counters) logged anyway: -v what "
                        "prefetch and read-ahead do, -vv also every fetch and its time")
    m.add_argument("--debug", action="store_true", help="log every FUSE request (libfuse -d)")
    _prefetch_options(m)
    _image_options(m)
    m.set_defaults(func=cmd_mount)

    r = sub.add_parser("record", help="run a command in an image and record what it reads, as a prefetch plan",
                       description="Mount IMAGE, run CMD chrooted into it (an overlay with a tmpfs for writes, "
                                   "/proc and /dev, the image's Env and WorkingDir) until it exits or --timeout, "
                                   "and make a prefetch plan of what it read, in order. The plan is attached to "
                                   "the image in its registry (or OCI layout) unless -o writes it to a file. "
                                   "Needs root. Example: lazylayer record docker://HOST/app:1 -- python3 -c "
                                   "'import app'")
    r.add_argument("image", metavar="IMAGE", help="the image")
    r.add_argument("argv", nargs="*", metavar="-- CMD [ARG ...]", help="the command to run in the image")
    r.add_argument("-o", "--output", metavar="FILE", help="write the plan to FILE instead of attaching it")
    r.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop the command after this long (the plan keeps what it read until then)")
    r.add_argument("--bare", action="store_true", help="run on the read-only mount itself (no overlay, /proc, /dev)")
    r.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    _image_options(r)
    r.set_defaults(func=cmd_record)

    u = sub.add_parser("umount", help="unmount a lazylayer mount and wait for its daemon to exit",
                       description="Unmount the lazylayer mount at MOUNTPOINT (fusermount3 -u) and wait for "
                                   "its daemon to exit. Anything else mounted there is refused.")
    u.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the image is mounted")
    u.add_argument("-l", "--lazy", action="store_true", help="detach now even if files are in use")
    u.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the daemon (default 30)")
    u.set_defaults(func=cmd_umount)

    e = sub.add_parser("cache", help="show, trim or clear the on-disk frame cache",
                       description="The on-disk cache of fetched frames and derived files (docs/cache.md). "
                                   "Its directory is $LAZYLAYER_CACHE_DIR, else $XDG_CACHE_HOME/lazylayer, "
                                   "else ~/.cache/lazylayer; its limit $LAZYLAYER_CACHE_MAX (default 10G).")
    e.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="the cache directory (default: as above)")
    ea = e.add_subparsers(dest="action", required=True, metavar="ACTION",
                          help="one of these (lazylayer cache ACTION --help tells more)")
    ei = ea.add_parser("info", help="where the cache is, how full, its limit",
                       description="Where the cache is, how much it holds and its limit (the most it may hold). "
                                   "A missing directory is an empty cache; it is not created.")
    ei.add_argument("--json", action="store_true", help="machine-readable output")
    et = ea.add_parser("trim", help="evict least recently used entries down to a size",
                       description="Evict least recently used entries until the cache holds at most SIZE "
                                   "(default: its limit). Entries in use are kept.")
    et.add_argument("--max-size", type=_size, default=None, metavar="SIZE",
                    help="size to trim to, e.g. 1G (default: the cache's limit)")
    ec = ea.add_parser("clear", help="remove every entry not in use",
                       description="Remove every entry not in use (a missing directory is left missing).")
    for a in (ei, et, ec):  # --cache-dir also after the action
        a.add_argument("--cache-dir", metavar="DIR", default=argparse.SUPPRESS, help="the cache directory")
    e.set_defaults(func=cmd_cache)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    if argv[:1] == ["record"] and "--" in argv:  # what follows -- is the command, options and all
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if command is not None:
        args.argv = command
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(args.func, args)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """A warning as the command's users want it: one line in words, without the source file and line."""
    kind = "" if issubclass(category, UserWarning) else f"{category.__name__}: "
    print(f"lazylayer: warning: {kind}{message}", file=sys.stderr if file is None else file)


def _error_text(exc: BaseException) -> str:
    """An error in words: ``PATH: No such file or directory`` rather than ``[Errno 2] ...: 'PATH'``."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{os.fsdecode(exc.filename)}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; errors become a one-line message and an exit code."""
    try:
        return func(args)
    except errors.LazyLayerError as exc:
        print(f"lazylayer: {_error_text(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # pragma: no cover - e.g. `lazylayer cat x | head`
        return 0
    except OSError as exc:
        print(f"lazylayer: {_error_text(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
