# Every target bootstraps .venv on a fresh machine (Python 3.11+ and pip are enough).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint format bench bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the main job on embedded defaults
	$(BIN)/shim demo

test: lint  ## ruff, mypy --strict, pytest (with PostgreSQL, Unleash, Prometheus and Chromium for it)
	scripts/ensure-chromium.sh
	scripts/ensure-prometheus.sh
	scripts/with-unleash.sh $(BIN)/python -m pytest

bench: $(STAMP)  ## every benchmark, full size; writes bench/RESULTS.md and bench/results.json
	$(BIN)/python bench/results.py

bench-smoke: $(STAMP)  ## every benchmark, small: keeps them working in CI (writes nothing)
	$(BIN)/python bench/results.py --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/check_layers.py
	$(BIN)/mypy shim flags comparators

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
