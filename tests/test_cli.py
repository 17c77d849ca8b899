"""The lazylayer command: demo, compress, info, cat, and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pyzstd

from lazylayer.cli import main


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
