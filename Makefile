# One-command setup: `make serve` and `make test` create .venv and install what is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
MOSHI_SPEC ?= moshi==0.2.13

# The browser-demo test drives Debian's Chromium (tests/browser) and the Grafana-panel test queries a real
# Prometheus (tests/ray); both are Debian packages installed on first `make test`.
CHROMIUM ?= /usr/bin/chromium
PROMETHEUS ?= /usr/bin/prometheus
export CHROMIUM PROMETHEUS
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export HF_HUB_OFFLINE ?= 1
export NO_TORCH_COMPILE ?= 1
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install serve test lint typecheck unit bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml scripts/install.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The same recipe as cluster.yaml's nodes (CPU torch here; TORCH_INDEX picks a CUDA build).
	PYTHON=$(PY) TORCH_SPEC="$(TORCH_SPEC)" MOSHI_SPEC="$(MOSHI_SPEC)" DEV=1 scripts/install.sh
	@touch $(STAMP)

serve: install
	$(PY) -m serve_app.run --config configs/local.yaml --host 127.0.0.1 --port $(PORT)

lint: install
	$(VENV)/bin/ruff check serve_app deployments tests examples
	$(VENV)/bin/ruff format --check serve_app deployments tests examples

typecheck: install
	$(VENV)/bin/mypy serve_app deployments

$(CHROMIUM) $(PROMETHEUS):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium prometheus

unit: install $(CHROMIUM) $(PROMETHEUS)
	$(PY) -m pytest -q

test: lint typecheck unit

bench: install
	$(PY) -m serve_app.bench.engine_bench
	$(PY) -m serve_app.bench.service_bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
