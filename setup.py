# The C extension is built by cffi from csrc/ (see lazylayer/_build.py); all other
# metadata lives in pyproject.toml.  setuptools has no pyproject key for cffi_modules.
from setuptools import setup

setup(cffi_modules=["lazylayer/_build.py:ffibuilder"])
