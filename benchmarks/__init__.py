"""lazylayer's benchmarks (docs/benchmarks.md).

The scripts that share code (``fetch``, ``image``, ``coldstart.run``) run as
modules from the repository root, e.g. ``python -m benchmarks.image --help``;
``decompress.py`` and ``convert.py`` run as files (``python
benchmarks/decompress.py``); ``netem.py`` and ``frame_size.py`` either way.
"""
