# Two commands for a fresh machine: `make demo` (the monitored grokking run) and `make test`.
# Both create .venv and install the pinned dependencies first; nothing else needs to be installed.
# .venv holds the library and, beside it, the paper's studies (studies/, `spectral-edge reproduce`).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch is pinned to the CPU build this project is developed and tested with; every other package to the
# versions in constraints.txt (`make constraints` refreshes them).
TORCH := torch==2.13.0
CONSTRAINTS := constraints.txt
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

# The HTML report's browser test drives Debian's Chromium. `make test` never installs system packages: the
# test skips, naming `make browser`, when Chromium is missing. CI runs `make browser` first (.ci/run).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo test test-slow bench bench-storage bench-billion lint constraints clean

$(STAMP): pyproject.toml studies/pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "spectral-edge needs Python >= 3.10"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -c $(CONSTRAINTS) "$(TORCH)"
	$(PIP) -c $(CONSTRAINTS) -e ".[test]" -e "./studies[test]"
	touch $(STAMP)

setup: $(STAMP)

browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

demo: setup
	$(BIN)/spectral-edge demo

test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

bench: setup
	$(BIN)/python benchmarks/monitor_step.py

# Memory, time per push and error of each window storage (float32, bfloat16, 8-bit, sketches) on real
# trajectories (docs/scale.md); and a 1.1e9-parameter model monitored at every step with a sketch.
bench-storage: setup
	$(BIN)/python benchmarks/storage_options.py

bench-billion: setup
	$(BIN)/python benchmarks/billion.py

lint: setup
	$(BIN)/ruff check src tests studies benchmarks
	$(BIN)/ruff format --check src tests studies benchmarks
	$(BIN)/mypy

# Newest releases within pyproject.toml's ranges, installed into a scratch venv and frozen into
# constraints.txt; then the suite runs against them. Commit constraints.txt only if it passes.
SCRATCH := .venv-constraints
constraints:
	rm -rf $(SCRATCH) && $(PYTHON) -m venv $(SCRATCH)
	$(SCRATCH)/bin/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(SCRATCH)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" -e "./studies[test]"
	{ sed -n '/^#/p' $(CONSTRAINTS); $(SCRATCH)/bin/python -m pip freeze --exclude-editable | grep -v '^torch=='; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf $(SCRATCH)
	$(MAKE) test

clean:
	rm -rf $(VENV) runs .pytest_cache
