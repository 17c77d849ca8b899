"""Lazy package exports (PEP 562): a package's names are imported from their submodule on first use.

A package lists what it exports and from which submodule; ``from
lazylayer.format import Toc`` then imports :mod:`lazylayer.format.layer` only,
not the tar scanner or the re-encoder with zstandard and tarfile behind them.
That keeps what a mount imports to what it uses (its start-up is measured in
milliseconds: docs/benchmarks.md).  ``lazylayer``, :mod:`lazylayer.format` and
:mod:`lazylayer.oci` use it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, from ``{submodule: names}``.

    A name is looked up once: the value is then set on the package, so later
    lookups are plain attribute reads.
    """
    where = {name: sub for sub, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        sub = where.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
