"""The plain C library: build liblazylayer.so, install it with its pkg-config file,
and compile, link and run the example program from docs/ against it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pyzstd

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not shutil.which("make") or not shutil.which("cc"):
        pytest.skip("make and a C compiler are needed to build the shared library")
    prefix = tmp_path_factory.mktemp("prefix")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(["make", "-s", "-C", str(ROOT / "csrc"), f"BUILD={build}", f"PREFIX={prefix}", "install"],
                   check=True)
    return prefix


def test_example_reads_a_range(installed, tmp_path, corpus):
    data = corpus[:2_000_000]
    blob = tmp_path / "data.zst"
    with pyzstd.SeekableZstdFile(blob, "w", max_frame_content_size=65536) as f:
        f.write(data)
    env = dict(os.environ, PKG_CONFIG_PATH=str(installed / "lib" / "pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "lazylayer"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    exe = tmp_path / "read_range"
    subprocess.run(["cc", "-Wall", "-Werror", str(ROOT / "docs/examples/read_range.c"), "-o", str(exe),
                    *flags, f"-Wl,-rpath,{installed / 'lib'}"], check=True)
    for off, n in [(0, 10), (123_457, 300_000), (len(data) - 5, 100), (len(data) + 1, 10)]:
        res = subprocess.run([str(exe), str(blob), str(off), str(n)], capture_output=True, check=True)
        assert res.stdout == data[off:off + n]
    bad = tmp_path / "bad.zst"
    bad.write_bytes(b"not a seekable file at all")
    res = subprocess.run([str(exe), str(bad), "0", "10"], capture_output=True)
    assert res.returncode == 1 and b"seek table" in res.stderr


def test_only_prefixed_symbols_are_exported(installed):
    lib = installed / "lib" / "liblazylayer.so"
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert names and all(n.startswith("ll_") for n in names), names
