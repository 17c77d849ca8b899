"""The lazylayer command: demo, compress, info, cat, and its exit codes."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tarfile
from typing import Any, Iterator

import images
import pytest
import pyzstd
from servers import unique_repo

from lazylayer.cli import main
from lazylayer.image import NotLazyWarning


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazylayer", *args], capture_output=True)


def test_demo_runs_on_its_embedded_default():
    res = run("demo", "--limit", "8M", "--files", "10")
    assert res.returncode == 0, res.stderr
    assert b"every byte checked" in res.stdout and b"range requests" in res.stdout


def test_compress_info_cat_roundtrip(tmp_path, corpus):
    src = tmp_path / "in.bin"
    src.write_bytes(corpus[:3_000_000])
    dst = tmp_path / "out.zst"
    assert main(["compress", str(src), str(dst), "--frame-size", "256K", "-q"]) == 0
    assert pyzstd.decompress(dst.read_bytes()) == corpus[:3_000_000]
    assert not (tmp_path / "out.zst.part").exists()

    res = run("info", str(dst), "--json")
    info = json.loads(res.stdout)
    assert info["uncompressed_size"] == 3_000_000 and info["data_frames"] == 12 and info["checksums"]

    res = run("cat", str(dst), "--offset", "1000", "--length", "1M")
    assert res.returncode == 0 and res.stdout == corpus[1000:1000 + (1 << 20)]
    res = run("cat", f"file://{dst}", "--offset", "2M", "--length", "5000")  # through fsspec
    assert res.returncode == 0 and res.stdout == corpus[2 << 20:(2 << 20) + 5000]


def test_errors_exit_1_with_a_message(tmp_path):
    bad = tmp_path / "bad.zst"
    bad.write_bytes(b"\x00" * 100)
    res = run("info", str(bad))
    assert res.returncode == 1 and b"seek table" in res.stderr
    res = run("cat", str(tmp_path / "missing.zst"))
    assert res.returncode == 1 and b"No such file" in res.stderr
    assert run("frobnicate").returncode == 2


# ------------------------------------------------------------------ what a new user meets


def _parsers(parser: argparse.ArgumentParser, name: str = "lazylayer") -> Iterator[tuple[str, Any]]:
    """Every parser of the command, with its name (``lazylayer cache trim``)."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _parsers(p, f"{name} {sub}")


def test_version_and_uniform_help():
    import lazylayer
    from lazylayer.cli import build_parser

    res = run("--version")
    assert res.returncode == 0 and res.stdout.decode() == f"lazylayer {lazylayer.__version__}\n"
    top = run("--help")
    assert top.returncode == 0 and b"convert" in top.stdout and b"Exit codes" in top.stdout
    parsers = list(_parsers(build_parser()))
    assert {n for n, _ in parsers} >= {"lazylayer demo", "lazylayer compress", "lazylayer info", "lazylayer umount",
                                       "lazylayer cat", "lazylayer cache trim"}
    for name, p in parsers:
        text = p.format_help()
        assert ":class:" not in text and "``" not in text and ":func:" not in text, (name, text)
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if isinstance(action, argparse._SubParsersAction):
                assert action.help and all(c.help for c in action._choices_actions), what
                continue
            assert action.help and action.help.strip(), f"{what} has no help string"
            if action.nargs != 0:  # takes a value: its metavar is in capitals (FILE, SIZE, N ...)
                shown = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
                assert shown == shown.upper(), f"{what}: metavar {shown!r}"


def test_ls_shows_symlinks_as_themselves_and_agrees_with_the_filesystem(tmp_path):
    from lazylayer.fs import ImageFileSystem

    tar = images.make_tar([
        images.entry("usr", tarfile.DIRTYPE), images.entry("usr/bin", tarfile.DIRTYPE),
        images.reg("usr/bin/tool", b"#!/bin/sh\n", mode=0o755),
        images.entry("bin", tarfile.SYMTYPE, linkname="usr/bin"),
        images.entry("etc", tarfile.DIRTYPE), images.reg("usr/os-release", b"ID=test\n" * 30),
        images.entry("etc/os-release", tarfile.SYMTYPE, linkname="../usr/os-release"),
    ])
    ref = images.build_layout(str(tmp_path / "img"), [tar], tag="v1")
    out = lambda *a: run("ls", *a, "--no-cache").stdout.decode()  # noqa: E731

    # like GNU ls: -d shows the link itself, not its target's name and type
    line = out("-ld", ref, "/bin").strip()
    assert line.startswith("lrwxrwxrwx ") and line.endswith(" /bin -> usr/bin"), line
    line = out("-l", ref, "/etc/os-release").strip()
    assert line.startswith("lrwxrwxrwx ") and line.endswith(" /etc/os-release -> ../usr/os-release"), line
    # a link to a directory, without -d: its entries, as `ls /bin/` would
    assert out(ref, "/bin").split() == ["tool"]
    assert out("-R", ref, "/bin").split() == ["/bin:", "tool"]

    fs = ImageFileSystem(ref, use_cache=False)
    try:
        with pytest.warns(NotLazyWarning, match="not lazy layers"):  # a library user is still told
            fs.image
        for path in ("/bin", "/etc/os-release", "/etc", "/usr/bin/tool"):
            got = json.loads(out("--json", "-d", ref, path))
            assert [e["name"] for e in got] == [fs.info(path)["name"]], path
            assert got[0]["type"] == fs.info(path)["type"]
        for path in ("/", "/bin", "/etc", "/usr"):
            got = json.loads(out("--json", ref, path))
            assert [e["name"] for e in got] == fs.ls(path, detail=False), path
        assert repr(fs) == f"<ImageFileSystem {ref}>"
    finally:
        fs.close()


def test_not_lazy_warning_says_once_in_words_and_progress_never_goes_to_stdout(tmp_path, registry):
    """A plain (gzip) image in a registry: the first read fetches and re-encodes its layers and says so
    once, in a line of words; a second run served by the disk cache says nothing."""
    tars = [images.make_tar([images.reg(f"data/f{i}.bin", os.urandom(300_000))]) for i in range(2)]
    repo = unique_repo("notlazy")
    registry.push(images.build_layout(str(tmp_path / "plain"), tars, tag="v1"), f"{repo}:v1")
    ref = f"docker://{registry.host}/{repo}:v1"
    cache = str(tmp_path / "cache")
    first = run("cat", ref, "/data/f1.bin", "--cache-dir", cache)
    assert first.returncode == 0 and first.stdout == tars[1][512:512 + 300_000], first.stderr
    lines = first.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"lazylayer: warning: {ref}: 2 of its 2 layers") and "lazylayer convert" in lines[0]
    assert ".py" not in lines[0] and "NotLazyWarning" not in lines[0]
    second = run("cat", ref, "/data/f1.bin", "--cache-dir", cache)
    assert second.returncode == 0 and second.stdout == first.stdout and second.stderr == b""

    # On a terminal the fetch draws one bar for all the layers, naming what it does, on stderr only.
    stdout, stderr = _with_tty_stderr("cat", ref, "/data/f0.bin", "--no-cache")
    assert stdout == tars[0][512:512 + 300_000]
    assert "fetching 2 layers whole (not lazy)" in stderr and "100%" in stderr, stderr


def _with_tty_stderr(*args: str) -> tuple[bytes, str]:
    """Run ``lazylayer ARGS`` with stdout a pipe and stderr a terminal; (stdout, what the terminal got)."""
    import pty
    import tempfile

    master, slave = pty.openpty()
    with tempfile.TemporaryFile() as out:  # a file, not a pipe: nothing waits on the other stream
        try:
            proc = subprocess.Popen([sys.executable, "-m", "lazylayer", *args], stdout=out, stderr=slave,
                                    stdin=subprocess.DEVNULL)
            os.close(slave)
            got = bytearray()
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                got += chunk
            assert proc.wait(timeout=120) == 0, got.decode(errors="replace")
        finally:
            os.close(master)
        out.seek(0)
        return out.read(), got.decode(errors="replace")


def test_convert_progress_and_summary(tmp_path):
    tars = [images.make_tar([images.reg(f"f{i}.bin", os.urandom(200_000))]) for i in range(2)]
    src = images.build_layout(str(tmp_path / "src"), tars, tag="v1")
    sources = [layer["digest"] for layer in images.image(str(tmp_path / "src"), "v1").manifest["layers"]]
    res = run("convert", src, f"oci:{tmp_path / 'out'}:v1")  # stderr is not a terminal: no bar
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    text = res.stdout.decode()
    for digest in sources:
        assert f"layer {digest[:19]}…: " in text and " gzip -> " in text and " frames, " in text
    assert text.splitlines()[-1].startswith(f"oci:{tmp_path / 'out'}:v1: manifest sha256:")
    assert text.rstrip().endswith(" s")

    stdout, stderr = _with_tty_stderr("convert", src, f"oci:{tmp_path / 'out2'}:v1", "--json")
    summary = json.loads(stdout)  # the bar went to the terminal, not into the JSON
    assert [x["source_digest"] for x in summary["layers"]] == sources and summary["seconds"] >= 0
    assert "convert: layer 2/2 sha256:" in stderr and "100%" in stderr, stderr


def test_a_refused_connection_is_said_plainly():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = run("inspect", f"docker://127.0.0.1:{port}/nothing:v1")
    err = res.stderr.decode()
    assert res.returncode == 1 and f"cannot connect to 127.0.0.1:{port}: Connection refused" in err, err
    assert "ssl:" not in err and "Traceback" not in err
