"""Build lazylayer._native, the cffi extension over the C library in ``csrc/``.

Run by ``pip install .`` (through ``cffi_modules`` in setup.py).  The C sources
are compiled into the extension itself and linked against the system libzstd, so
the Python package and ``liblazylayer.so`` (``make -C csrc``) are the same code.
The cdef is the part of ``csrc/lazylayer.h`` between its ``cffi-begin`` and
``cffi-end`` markers, so the header stays the one description of the API.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "csrc")
SOURCES = ["common.c", "seektable.c", "cache.c", "pool.c", "reader.c", "writer.c", "json.c", "toc.c", "index.c", "resolve.c",
           "oci.c", "diskcache.c", "image.c", "sockhost.c", "fuse.c", "gzindex.c", "erofs.c", "erofsd.c", "chunked.c"]

# Callbacks into Python: the read and write callbacks of sources and writers.
PYTHON_CALLBACKS = """
extern "Python" int _ll_py_read(void *opaque, uint64_t offset, size_t size, void *dst);
extern "Python" int _ll_py_write(void *opaque, const void *src, size_t size);
extern "Python" void _ll_py_on_read(void *opaque, uint64_t ino, uint64_t offset, uint64_t size);
"""


def _cdef_from_header() -> str:
    with open(os.path.join(CSRC, "lazylayer.h"), encoding="utf-8") as f:
        text = f.read()
    body = text.split("cffi-begin", 1)[1].split("/* cffi-end */", 1)[0]
    body = body.split("*/", 1)[1]  # drop the rest of the marker comment
    body = body.replace("LL_API ", "")
    return re.sub(r"/\*.*?\*/", "", body, flags=re.S)


def _check_system_headers() -> None:
    """Fail early, naming the package, when a build dependency is missing."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("lazylayer needs a C compiler to build its extension (Debian: apt-get install gcc)")
    missing = []
    for header, package in (("zstd.h", "libzstd-dev"), ("xxhash.h", "libxxhash-dev"),
                            ("openssl/sha.h", "libssl-dev"), ("zlib.h", "zlib1g-dev"),
                            ("isa-l/igzip_lib.h", "libisal-dev")):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "t.c")
            with open(src, "w") as f:
                f.write(f"#include <{header}>\nint main(void) {{ return 0; }}\n")
            res = subprocess.run([cc, "-fsyntax-only", src], capture_output=True)
            if res.returncode != 0:
                missing.append(f"{header} (Debian/Ubuntu package {package})")
    if missing:
        raise RuntimeError(
            "lazylayer's C extension cannot be built: missing " + ", ".join(missing)
            + ". Install them, e.g. `apt-get install libzstd-dev libxxhash-dev libssl-dev zlib1g-dev libisal-dev`, "
            "and retry."
        )


ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header() + PYTHON_CALLBACKS)
ffibuilder.set_source(
    "lazylayer.core._native",
    '#include "lazylayer.h"',
    sources=[os.path.relpath(os.path.join(CSRC, s)) for s in SOURCES],
    include_dirs=[CSRC],
    libraries=["zstd", "crypto", "z", "isal", "pthread"],
    extra_compile_args=["-std=c11", "-D_GNU_SOURCE", "-O2", "-fvisibility=hidden"],
)

if os.environ.get("LAZYLAYER_SKIP_HEADER_CHECK") != "1":
    _check_system_headers()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
