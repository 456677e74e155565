# Voice Agents — one task runner. `make help` lists the targets.
include infra/versions.env

SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_HOME := .local/uv-venv
UV := $(UV_HOME)/bin/uv
PY := .venv/bin/python
export UV_PYTHON ?= python3
export UV_PROJECT_ENVIRONMENT := .venv

.PHONY: help demo dev call test lint bench bench-install infra-install infra-up infra-down catalog

help: ## List the targets
	@grep -hE '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(UV):
	@mkdir -p .local/log && { python3 -m venv $(UV_HOME) && $(UV_HOME)/bin/pip install -q "uv==$(UV_VERSION)"; } >.local/log/uv.log 2>&1 \
		|| { echo "install: could not install uv $(UV_VERSION) from PyPI with pip (see .local/log/uv.log)" >&2; exit 1; }

.venv/.synced: $(UV) uv.lock pyproject.toml contracts/pyproject.toml infra/devstack/pyproject.toml $(wildcard services/*/pyproject.toml)
	@mkdir -p .local/log && $(UV) sync --all-packages --frozen -q 2>.local/log/uv-sync.log || { echo "install: could not install the Python dependencies with uv sync --all-packages --frozen (see .local/log/uv-sync.log)" >&2; exit 1; }
	@touch $@

python: .venv/.synced ## (internal) install the Python dependencies

infra-install: ## Install PostgreSQL, NATS server and LiveKit server at the pinned versions
	@./infra/install.sh

test: lint infra-install ## Lint, then run the whole test suite against real local servers
	@.venv/bin/pytest $(PYTEST_ARGS)

lint: python ## ruff and mypy --strict
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@.venv/bin/mypy

demo: python infra-install ## Start the whole stack on loopback and place a simulated phone call
	@$(PY) -m voiceagents.devstack demo

dev: python infra-install ## Keep the stack up for manual calls (Ctrl-C stops it)
	@$(PY) -m voiceagents.devstack dev

call: python ## Place another simulated call against a running `make dev`
	@$(PY) -m voiceagents.devstack call

infra-up: python infra-install ## Start PostgreSQL, NATS and LiveKit in the background (.local/stack)
	@$(PY) -m voiceagents.devstack infra-up

infra-down: python ## Stop what infra-up started
	@$(PY) -m voiceagents.devstack infra-down

catalog: python ## Print the tool catalog (JSON) the voice worker reports to the registry
	@$(PY) -m voiceagents.worker.tools.print_catalog

bench: python bench-install ## Run every benchmark under bench/ (tables + bench/results/*.json)
	@for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

bench-%: python bench-install ## Run one benchmark: make bench-registry, bench-gateway, ...
	@$(PY) bench/bench_$*.py

bench-install: ## (internal) infra-install plus the benchmarks' HTTP load generator
	@./infra/install.sh --bench
