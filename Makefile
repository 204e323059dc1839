# Poolhouse — the contracts: make run, make test, make bench (see README.md).
# As root the environments are made from the system's Python (Debian's /usr/bin/python3),
# which every pool identity can execute: an interpreter under root's 0700 home (pyenv's)
# could not be run by the workers' per-pool users (docs/process-model.md, Identities).
SYSTEM_PYTHON := /usr/bin/python3
PYTHON ?= $(shell if [ "$$(id -u)" = 0 ] && $(SYSTEM_PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
                    2>/dev/null; then echo $(SYSTEM_PYTHON); else echo python3; fi)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A second environment with an older Flask and Poolhouse's worker runtime: a pool whose
# <python executable> points into it (tests/integration/test_hosting_venvs.py).
ALT_VENV  := .venv-alt
ALT_STAMP := $(ALT_VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install system-deps python-venv run test unit integration bench bench-deps bench-websocket cache-tests clean

$(PY):
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory python-venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-installs only when pyproject.toml changed: `make install` is idempotent.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The worker runtime is Poolhouse itself, installed editable so it is always the service's
# own version; Flask 2.x beside the main environment's Flask 3.
$(ALT_STAMP): pyproject.toml | $(STAMP)
	$(PYTHON) -m venv $(ALT_VENV)
	$(ALT_VENV)/bin/python -m pip install -q 'flask>=2.3,<3' 'werkzeug>=2.3,<3' -e .
	touch $(ALT_STAMP)

# Debian splits venv/ensurepip off its Python (python3-venv).
python-venv:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv) >/dev/null; \
	else echo "error: $(PYTHON) has no venv module (install python3-venv)"; exit 1; fi

# Programs the tests drive for real (goaccess parses the W3C log, systemd-analyze checks
# the shipped unit file), from Debian's packages.
system-deps:
	@command -v goaccess >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq goaccess) >/dev/null \
	      || echo "warning: could not install goaccess; the W3C log format test will be skipped"; \
	  else echo "warning: goaccess missing (install it to run the W3C log format test)"; fi; }
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd) >/dev/null \
	      || echo "warning: could not install systemd; the unit file check will be skipped"; \
	  else echo "warning: systemd-analyze missing (install systemd to run the unit file check)"; fi; }

install: $(STAMP) $(ALT_STAMP) system-deps

run: install
	$(VENV)/bin/poolhouse serve --state-dir .poolhouse

test: install
	$(PY) -m mypy --strict src/poolhouse/ipc src/poolhouse/config src/poolhouse/http
	$(PY) -m pytest -q tests

unit: install
	$(PY) -m pytest -q tests/unit

integration: install
	$(PY) -m pytest -q tests/integration

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	bash bench/install-peers.sh
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)

# The peers side by side (bench/run.py), then each area's own figures.
bench: bench-deps
	$(PY) bench/run.py
	$(PY) bench/config_load.py --output bench/results/config_load.json
	$(PY) bench/pipeline.py --output bench/results/pipeline.json
	$(PY) bench/process_model.py --output bench/results/process_model.json
	$(PY) bench/hosting.py --output bench/results/hosting.json
	$(PY) bench/listener.py --json bench/results/listener.json
	$(PY) bench/files.py --json bench/results/files.json
	$(PY) bench/http_cache_tests.py --output bench/results/http_cache_tests.json
	$(PY) bench/websocket.py --exclude '12.*' --exclude '13.*' --output bench/results/websocket.json

# ASGI WebSocket against uvicorn and granian: echo throughput and all the Autobahn cases,
# the permessage-deflate ones (12.*, 13.*) too, which take ~35 min over four servers;
# `make bench` runs the same without those (~3 min).
bench-websocket: bench-deps
	$(PY) bench/websocket.py --output bench/results/websocket.json

# The HTTP cache test suite (http-cache-tests, npm) against Poolhouse and nginx proxy_cache.
cache-tests: bench-deps
	$(PY) bench/http_cache_tests.py --output bench/results/http_cache_tests.json

clean:
	rm -rf $(VENV) $(ALT_VENV) build src/*.egg-info .pytest_cache
