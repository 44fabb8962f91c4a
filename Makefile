# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast bench-geocells bench-ingest bench-ingest-http clean postgres-server

# A few lines say what it does and how long it took; pip's own output goes to $(INSTALL_LOG) (shown on failure).
INSTALL_LOG := $(VENV)/install.log
$(STAMP): pyproject.toml
	@echo "install: $(VENV) with geosurge and its test tools (PyTorch CUDA build, Ray, DeepSpeed, MLflow: ~7 GB," \
	  "a few minutes); pip's output in $(INSTALL_LOG)"
	@start=$$(date +%s); $(PYTHON) -m venv $(VENV) && \
	  { $(BIN)/pip install --upgrade pip && $(BIN)/pip install -e ".[test]"; } > $(INSTALL_LOG) 2>&1 \
	  || { tail -n 25 $(INSTALL_LOG); echo "install: failed (whole output: $(INSTALL_LOG))"; exit 1; }; \
	  $(BIN)/geosurge build-ops || { echo "install: geosurge build-ops failed"; exit 1; }; \
	  touch $(STAMP); echo "install: done in $$(( $$(date +%s) - start )) s"

install: $(STAMP)

demo: $(STAMP)  ## the whole pipeline on embedded defaults (local Ray, local folder, sqlite MLflow, CPU)
	$(BIN)/geosurge run

# Two test processes (pytest-xdist), the slow tests handed out first (tests/conftest.py): one process alone kept 2 cores
# about half busy (waits on servers, subprocesses, Ray's start-up), two keep them busy. Each starts its own services.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

test: $(STAMP) postgres-server  ## every test, the Ray-job end-to-end test included
	$(PYTEST) --durations=12

# tests/infra runs the MLflow server as deployed on a real PostgreSQL: its server binaries (initdb, pg_ctl) come from
# Debian's package, installed here when missing and we are root (as CI is); without root, install PostgreSQL yourself
# (the tests name what is missing; under CI=true they fail instead of skipping). No cluster is created or started.
postgres-server:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "postgres-server: installing Debian's postgresql (server binaries for tests/infra)"; \
	  mkdir -p /etc/postgresql-common && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    -o Dpkg::Options::=--force-confold postgresql > /dev/null; \
	else echo "postgres-server: no PostgreSQL server binaries (initdb) and not root: install PostgreSQL to run" \
	  "tests/infra's PostgreSQL tests"; fi

test-fast: $(STAMP)  ## skip the minutes-long end-to-end runs
	$(PYTEST) -m "not slow"

bench-geocells: $(STAMP)  ## a 7-level hierarchy over 4.72 M coordinates: build time and peak memory
	$(BIN)/python benchmarks/geocells.py

bench-ingest: $(STAMP)  ## ingest images/s vs the decode-bound limit and a naive loop, segmenter on/off, driver RSS 20k vs 200k rows
	$(BIN)/python benchmarks/ingest.py

bench-ingest-http: $(STAMP)  ## ingest over HTTP from nginx on loopback, whole processes (I2D=V/bin/img2dataset: side by side)
	$(BIN)/python benchmarks/ingest_http.py $(if $(I2D),--img2dataset $(I2D))

clean:
	rm -rf runs .pytest_cache
