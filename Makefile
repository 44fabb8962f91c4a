# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast bench-geocells bench-ingest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## the whole pipeline on embedded defaults (local Ray, local folder, sqlite MLflow, CPU)
	$(BIN)/python workflows/full_pipeline.py

test: $(STAMP)  ## every test, the Ray-job end-to-end test included
	$(BIN)/pytest -q --durations=8

test-fast: $(STAMP)  ## skip the minutes-long end-to-end runs
	$(BIN)/pytest -q -m "not slow"

bench-geocells: $(STAMP)  ## a 7-level hierarchy over 4.72 M coordinates: build time and peak memory
	$(BIN)/python benchmarks/geocells.py

bench-ingest: $(STAMP)  ## ingest images/s vs the decode-bound limit and a naive loop, segmenter on/off, driver RSS 20k vs 200k rows
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf runs .pytest_cache
