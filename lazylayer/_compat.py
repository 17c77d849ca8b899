"""Old module paths, from before the subpackages: they still import, with a DeprecationWarning.

``import lazylayer.cache`` gives the module object of ``lazylayer.image.cache``
itself (not a copy), so ``isinstance`` checks and monkeypatching keep working
whichever name a caller used.  Each entry is removed one release after its
warning first shipped; docs/python-api.md lists the current paths.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Sequence

#: old module name -> the module it is now
MOVED = {
    "lazylayer.auth": "lazylayer.registry.auth",
    "lazylayer.referrers": "lazylayer.registry.referrers",
    "lazylayer.cache": "lazylayer.image.cache",
    "lazylayer.tree": "lazylayer.image.tree",
    "lazylayer.tarstream": "lazylayer.format.tar",
    "lazylayer.seekable": "lazylayer.core.seekable",
    "lazylayer._lib": "lazylayer.core._lib",
    "lazylayer._native": "lazylayer.core._native",
}


class _Alias:
    # A meta path finder and its own loader (both protocols are duck-typed: importlib.abc, which
    # would only add the base classes, costs ~13 ms of start-up).

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module is the new one, already executed


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
