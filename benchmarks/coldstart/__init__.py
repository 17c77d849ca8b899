"""The cold-start benchmark: ``python -m benchmarks.coldstart.run --help`` from the repository root."""
