# The README's commands: `make run` (install everything, run the main HPO experiment), `make test` (the quick
# default set) and `make test-all` (every test but the GPU ones: what CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPEC ?= examples/flights-rf.yaml

.PHONY: install run test test-all lint browser bench

$(BIN)/rapids-hpo: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

install: $(BIN)/rapids-hpo

run: install
	$(BIN)/rapids-hpo run $(SPEC)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser tests will skip"

test: install lint browser
	$(BIN)/python -m pytest

test-all: install lint browser
	$(BIN)/python -m pytest -m "not gpu"

bench: install
	$(BIN)/python bench/train_speed.py
