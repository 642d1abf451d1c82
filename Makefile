# The two commands of the README, each creating/updating its own virtualenv in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: run test test-slow lint bench clean

# The benchmark runs from an install like a dyno's: the runtime dependencies, plus the test kit
# (fake providers and the bench itself, a distribution of its own: testkit/pyproject.toml).
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

$(STAMP): pyproject.toml testkit/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,embedded]' -e ./testkit
	touch $(STAMP)

## The zero-config demo: the daemon on embedded PostgreSQL, console transports, a sample booking walked through.
run: $(STAMP)
	$(BIN)/flavor-worker demo

## Run the test suite (real PostgreSQL: TEST_DATABASE_URL, Docker, or embedded; the pooler
## tests run when a pgbouncer binary is installed, and skip saying so otherwise).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -n $(PYTEST_WORKERS) -q

## The slow tests (minutes): the wheel built and installed alone in a clean venv and used from
## elsewhere, the fault tests with real processes and outages, the console on a 1,000,000-event
## ledger. .ci/run runs them.
test-slow: $(STAMP)
	$(BIN)/pytest -m slow -q -n $(PYTEST_WORKERS)

$(BENCH_STAMP): pyproject.toml testkit/pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e . -e ./testkit
	touch $(BENCH_STAMP)

## Measure the whole path from committed row to provider request (BENCH_ARGS=--quick, --json).
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/flavor-worker bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(BENCH_VENV) .data .pytest_cache .ruff_cache
