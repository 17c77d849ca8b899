"""lazylayer's test suite (docs/testing.md).

A package so that its helpers import from the repository root as well
(``from tests.images import build_layout`` in benchmarks/); the tests
themselves import them flat (``from servers import ...``), with tests/ on
``sys.path`` by pyproject.toml's ``pythonpath``.
"""
