# Quick start: `make run` serves on $(PORT); `make test` runs the whole suite.
# Both create .venv on first use; the only prerequisite is Python 3.11 or 3.12 with a C compiler
# (durable-rules 2.0.28 ships as source only).
PORT ?= 8080
HOST ?= 127.0.0.1
WORKERS ?= 2
# `make run` checks PORT before it installs or starts anything
ifneq ($(filter run,$(MAKECMDGOALS)),)
  ifeq ($(shell echo '$(PORT)' | grep -Ex '[0-9]{1,5}'),)
    $(error PORT must be a number from 1 to 65535, got '$(PORT)')
  endif
  ifneq ($(shell test '$(PORT)' -ge 1 -a '$(PORT)' -le 65535 && echo ok),ok)
    $(error PORT must be a number from 1 to 65535, got '$(PORT)')
  endif
endif
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))' 2>/dev/null; then echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast lint bench rules clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Python 3.11 or 3.12 is required (durable-rules does not import on 3.13)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# `legmove-cds serve`: gunicorn with gunicorn.conf.py (worker model, timeouts), the configuration
# LEGMOVE_CONFIG names (development by default), bound to HOST:PORT (loopback by default)
run: $(VENV)/.installed
	LEGMOVE_CONFIG=$${LEGMOVE_CONFIG:-development} HOST='$(HOST)' PORT='$(PORT)' WORKERS='$(WORKERS)' \
		$(BIN)/legmove-cds serve

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked `slow` (real browsers, nginx, many gunicorn
# instances, the Synthea population, load and slow-client runs), on FAST_WORKERS processes
# (pytest-xdist; each builds its own engines and servers, on ports it asks the kernel for), stopping
# at the first failure. `make test`, which CI runs, stays in one process.
FAST_WORKERS ?= 2
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -x -n $(FAST_WORKERS) -m "not slow"

$(VENV)/.lint-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $@

# What CI checks before the tests: ruff (lint and format) and mypy for the Python (configured in
# pyproject.toml), hadolint and kubernetes-validate (offline) for deploy/.
lint: $(VENV)/.lint-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint deploy/Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet -k 1.30.0 deploy/kubernetes/*.yaml

# Not part of `make test`: starts the service as `make run` does and loads it with wrk (apt-get install wrk).
bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
