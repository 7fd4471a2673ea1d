# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DURATION ?= 60
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: demo test services browser lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dashboard]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,redis,postgres,prometheus,otel,dashboard]'
	touch $@ $(VENV)/.core

demo: $(VENV)/.core
	$(BIN)/conveyor demo --duration $(DURATION) --dashboard-port $(PORT)

services:
	bash .ci/services.sh

# Debian's Chromium for the dashboard's browser tests (Playwright never downloads a browser here).
browser:
	@test -x /usr/bin/chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests examples bench

typecheck: $(VENV)/.dev
	$(BIN)/mypy --strict src

test: $(VENV)/.dev services browser lint typecheck
	$(BIN)/pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

unit: $(VENV)/.dev
	$(BIN)/pytest -q tests/unit tests/contract -k "memory or sqlite or not contract"

# Side-by-side benchmarks against peers (about 25 minutes; see bench/README.md).
bench:
	bash bench/run.sh $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache conveyor-demo.db*
