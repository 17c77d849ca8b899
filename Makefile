# The two commands of the README.  Both set up a fresh machine first
# (scripts/setup.sh: system packages, .venv, lazylayer built from source);
# on a machine already set up that is a quick, silent check.
.PHONY: setup demo test bench lib

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/lazylayer demo

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/decompress.py

lib:
	$(MAKE) -C csrc
