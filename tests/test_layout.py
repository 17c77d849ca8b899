"""The package imports one way only: each layer of lazylayer/ uses only the layers below it.

Read from the source with ``ast`` (every ``import`` statement, those inside
functions too), so a new upward import fails here before it becomes a cycle.
The order is docs/architecture.md's; a deprecation shim that must reach up
does so with ``importlib.import_module`` by name, on purpose and in one place.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "lazylayer"

#: bottom to top; names on one line are independent of each other
LAYERS = [
    ["errors", "units", "_compat", "_exports"],
    ["progress"],
    ["core"],
    ["remote"],
    ["oci"],
    ["registry"],
    ["format"],
    ["image"],
    ["prefetch"],
    ["fs", "mount", "convert", "index"],
    ["record", "demo"],
    ["cli"],
    ["__main__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = ["lazylayer", *rel.parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The lazylayer modules ``name`` imports, as absolute names."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lazylayer"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("lazylayer"):
                continue
            for a in node.names:  # `from pkg import module` imports the module
                sub = f"{mod}.{a.name}"
                found.add(sub if sub in MODULES else mod)
    return found


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_top_level_name_has_a_layer():
    tops = {_top(m) for m in MODULES} - {""}
    assert tops <= set(RANK), f"add {sorted(tops - set(RANK))} to LAYERS (and to docs/architecture.md)"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_only(name):
    me = _top(name)
    bad = []
    for target in sorted(_imports(name, MODULES[name])):
        other = _top(target)
        if other == me:
            continue
        if target == "lazylayer" and name != "lazylayer":
            continue  # the root package (``__version__``) is loaded before any module in it
        if name == "lazylayer":  # the package itself re-exports the core and errors only (the rest lazily)
            if other not in ("core", "errors", "_compat", "_exports"):
                bad.append(target)
            continue
        if other == "" or RANK[other] >= RANK[me]:
            bad.append(target)
    assert not bad, f"{name} (layer {me!r}) imports {bad}: a layer imports only those below it"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` (as a path that ends where it starts), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_inside_a_package():
    graph = {name: {t for t in _imports(name, path) if _top(t) == _top(name) and t != name and t in MODULES}
             for name, path in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_read_path_does_not_load_the_converter_or_isal():
    """ISA-L is for converting gzip layers; the mount never needs it (fsspec itself loads it, so
    ``lazylayer.fs`` does not count)."""
    import subprocess
    import sys

    code = ("import sys, lazylayer.image, lazylayer.mount, lazylayer.prefetch; "
            "print(sorted(m for m in sys.modules if m in ('lazylayer.convert', 'isal') or m.startswith('isal.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
