# threads-search: `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
# The environment is keyed by the dependency lists only (pyproject's dependency sections + lock).
DEPS_HASH := $(shell { sed -n '/^dependencies/,/^\[project.scripts\]/p' pyproject.toml; cat requirements.lock; } | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/threads-search/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: env demo test lint format bench lock clean help
help:
	@echo "make demo   set up, then run the demo on generated data (output in $(DEMO_OUT)/)"
	@echo "make test   set up, then ruff + the whole test suite"
	@echo "make bench  run the benchmarks in bench/ (tables + JSON in bench/results/)"
	@echo "environment: $(VENV)"

env:
	@PYTHON=$(PYTHON) scripts/setup-env.sh $(VENV)

demo: env
	$(BIN)/threads-search demo --out $(DEMO_OUT)

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=. $(BIN)/lint-imports --no-cache

format: env
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: env
	@for b in bench/*.py; do echo "==> $$b"; $(BIN)/python $$b || exit 1; done

lock: env
	{ echo "# Exact versions tested together (pip constraints). Regenerate with: make lock"; $(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(pip|setuptools|wheel)==' | sort -f; } > requirements.lock

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
