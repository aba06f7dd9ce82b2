# The README's two commands: `make run` (install everything, run the main HPO experiment) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPEC ?= examples/flights-rf.yaml

.PHONY: install run test lint bench

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

test: install lint
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser tests will skip"
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/train_speed.py
