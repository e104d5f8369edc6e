# One command vocabulary for people, hooks and CI. `make` alone lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
# Use the operating system's certificate store (corporate proxies, offline mirrors).
export UV_NATIVE_TLS ?= 1
export UV_PYTHON_DOWNLOADS ?= never
export NML_DISABLE_USAGE_LOGGING := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: uv
uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv

# A stamp of its own: .venv/bin/python is a symlink, and touching it would touch the shared interpreter
# (marking every other virtualenv made from it up to date).
$(VENV)/.installed: requirements-dev.lock pyproject.toml | uv
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python requirements-dev.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv from the lockfile (bootstraps uv with pip if missing)

.PHONY: demo
demo: install ## The whole loop on this machine: stack, deploy, first champion, drift, retrain, summary
	$(BIN)/reggaeton demo

.PHONY: up
up: install ## Start (or reuse) the local stack: Prefect server + worker, MLflow, API, alert receiver
	$(BIN)/reggaeton up

.PHONY: deploy
deploy: install ## Work pool, deployments (prefect.yaml) and automations; idempotent
	$(BIN)/reggaeton deploy

.PHONY: down
down: ## Stop exactly the processes the stack started (by their PID files)
	@if [ -x $(BIN)/reggaeton ]; then $(BIN)/reggaeton down; fi

.PHONY: lock
lock: uv ## Re-resolve the lockfiles from pyproject.toml
	$(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes -c constraints.txt pyproject.toml -o requirements.lock
	$(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes -c constraints.txt --extra dev --extra infra pyproject.toml -o requirements-dev.lock
	$(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes -c requirements.lock requirements-serving.in -o requirements-serving.lock

.PHONY: lint
lint: install ## Ruff lint and format check, and the import contracts (the house plan, pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

.PHONY: format
format: install ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: typecheck
typecheck: install ## mypy on the packages and the benchmarks
	$(BIN)/mypy
	$(BIN)/mypy benchmarks

# The suite runs on pytest-xdist workers. Most of its time is waiting (servers, heartbeats, schedules),
# so more workers than cores overlap the waits; tests/scheduling.py hands the longest modules out first.
TEST_WORKERS ?= 4
# TESTS=tests/loop/test_faults.py (a module, a folder, a node id) runs only those; default: the suite.
TESTS ?=
N ?= 3
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup
# The fast tier: core, adapters, serving, monitoring and command-line units; SQLite and in-process
# uvicorn, no Prefect or MLflow server, no stack, no containers.
FAST_TESTS := tests/reggaeton tests/adapters tests/serving tests/monitoring tests/cli tests/test_contracts.py tests/test_layers.py tests/test_scheduling.py
FAST_MARKERS := not slow and not docker and not prefect

.PHONY: test
test: install ## Run the whole test suite (the README's test command; CI runs it); TESTS=path for a part
	$(PYTEST) $(TESTS)

.PHONY: test-fast
test-fast: install ## The fast tier: units of core, adapters, serving, monitoring, CLI (no servers), ~2 min
	$(BIN)/pytest -n 2 --dist loadgroup -m "$(FAST_MARKERS)" $(or $(TESTS),$(FAST_TESTS))

.PHONY: test-repeat
test-repeat: install ## Run TESTS (default: the whole suite) N times in a row (N=3); fails if any run failed
	@failed=0; for run in $$(seq 1 $(N)); do \
	  echo "== run $$run of $(N): $(or $(TESTS),the whole suite)"; \
	  $(PYTEST) $(TESTS) || failed=$$((failed + 1)); \
	done; \
	echo "== $$failed of $(N) runs failed"; [ $$failed -eq 0 ]

.PHONY: test-durations
test-durations: install ## Run the whole suite and store each module's time (the order of later runs)
	$(PYTEST) --store-durations

.PHONY: check
check: lint typecheck test ## Lint, types, then tests

.PHONY: bench-train
bench-train: install ## Time 50 Optuna trials on the original data (DATA=folder) and the MLflow logging overhead
	$(BIN)/python benchmarks/bench_train.py $(if $(DATA),--data $(DATA))

.PHONY: bench-retrain
bench-retrain: install ## A drift retrain on the original data (DATA=folder), slice by slice against the model it replaces
	$(BIN)/python benchmarks/bench_retrain.py $(if $(DATA),--data $(DATA))

.PHONY: bench-selection
bench-selection: install ## Does CV rank a study's best trials as the held-out part does? (DATA=folder)
	$(BIN)/python benchmarks/cv_vs_holdout.py $(if $(DATA),--data $(DATA))

.PHONY: bench-monitor
bench-monitor: install ## Monitor run vs NannyML alone at 1 M, 2.7 M, 5 M rows (POSTGRES_URL=... adds Postgres)
	$(BIN)/python benchmarks/bench_monitor.py $(if $(POSTGRES_URL),--postgres-url $(POSTGRES_URL))

.PHONY: bench-score
bench-score: install ## reggaeton score vs mlflow models predict on 1 M rows; rows/s and peak RSS at 1 M and 10 M rows
	$(BIN)/python benchmarks/bench_score.py $(if $(ROUNDS),--rounds $(ROUNDS))

.PHONY: bench-serve
bench-serve: install ## Serving benchmark vs mlflow models serve and a bare endpoint (needs wrk)
	@command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk (Debian/Ubuntu)"; exit 2; }
	$(BIN)/python benchmarks/bench_serve.py
