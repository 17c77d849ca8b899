# The C extension is built by cffi from csrc/ (see lazylayer/core/_build.py); all other
# metadata lives in pyproject.toml.  setuptools has no pyproject key for cffi_modules.
from setuptools import setup

setup(cffi_modules=["lazylayer/core/_build.py:ffibuilder"])
