# The C extension is built by cffi from csrc/ (see lazylayer/core/_build.py); all other
# metadata lives in pyproject.toml.  setuptools has no pyproject key for cffi_modules.
# The version is written once, in csrc/lazylayer.h (LL_VERSION_MAJOR/MINOR/PATCH):
# pyproject.toml lists it as dynamic and it is read from there.
import os
import re

from setuptools import setup
from setuptools.command.build_ext import build_ext


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


# lazylayer-erofsd, the supervisor of an erofs mount as a program of its own (csrc/lazylayer-erofsd.c,
# libc only; the same sources as EROFSD_SRCS in csrc/Makefile): built beside the extension, in
# lazylayer/core/, where lazylayer.mount.erofs starts it (ll_erofs_exec) instead of forking itself.
SUPERVISOR = "lazylayer-erofsd"
SUPERVISOR_SOURCES = ["csrc/erofsd.c", "csrc/json.c", "csrc/lazylayer-erofsd.c"]


class BuildExt(build_ext):
    """build_ext, then the supervisor program next to the extension (in place for ``pip install -e``)."""

    def run(self) -> None:
        super().run()
        out_dir = os.path.dirname(self.get_ext_fullpath("lazylayer.core._native"))
        objects = self.compiler.compile(SUPERVISOR_SOURCES, output_dir=self.build_temp, include_dirs=["csrc"],
                                        extra_postargs=["-std=c11", "-D_GNU_SOURCE", "-O2"])
        self.compiler.link_executable(objects, SUPERVISOR, output_dir=out_dir)


setup(version=_version(), cffi_modules=["lazylayer/core/_build.py:ffibuilder"], cmdclass={"build_ext": BuildExt})
