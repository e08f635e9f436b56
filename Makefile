# One venv for everything; every target creates it on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,pipecat,livekit]'
	touch $(STAMP)

demo: $(STAMP)  ## the service with live simulated calls and the dashboard (embedded: no Redis, no PostgreSQL)
	$(BIN)/callstream demo

test: $(STAMP)  ## the whole test suite: lint, types, unit, end-to-end, Redis, PostgreSQL, browser
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)  ## the benchmark suite (not part of CI): bench/README.md
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
