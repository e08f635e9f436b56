# One venv for everything; every target creates it on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test docs lint typecheck check bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,pipecat,livekit]'
	touch $(STAMP)

install: $(STAMP)  ## .venv with callstream and everything the tests and the docs need

demo: $(STAMP)  ## the service with live simulated calls and the dashboard (embedded: no Redis, no PostgreSQL)
	$(BIN)/callstream demo

test: $(STAMP)  ## the whole test suite: lint, types, the docs site, unit, end-to-end, Redis, PostgreSQL, browser
	$(BIN)/ruff check src tests tools
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # not --quiet: it would hide the warnings that --strict fails on
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 4 --dist loadfile  # 4 workers, a test file each: most tests wait on servers

docs: $(STAMP)  ## the documentation site, served at http://127.0.0.1:8000 while you edit docs/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: $(STAMP)
	$(BIN)/ruff check src tests tools bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)  ## the benchmark suite (not part of CI): bench/README.md
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .site
