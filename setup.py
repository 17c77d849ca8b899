# The C extension is built by cffi from csrc/ (see lazylayer/core/_build.py); all other
# metadata lives in pyproject.toml.  setuptools has no pyproject key for cffi_modules.
# The version is written once, in csrc/lazylayer.h (LL_VERSION_MAJOR/MINOR/PATCH):
# pyproject.toml lists it as dynamic and it is read from there.
import os
import re

from setuptools import setup


def _version() -> str:
    header = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "lazylayer.h")
    with open(header, encoding="utf-8") as f:
        text = f.read()
    parts = []
    for part in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(rf"^#define LL_VERSION_{part}\s+(\d+)\s*$", text, re.M)
        if not m:
            raise RuntimeError(f"{header}: no LL_VERSION_{part}")
        parts.append(m.group(1))
    return ".".join(parts)


setup(version=_version(), cffi_modules=["lazylayer/core/_build.py:ffibuilder"])
