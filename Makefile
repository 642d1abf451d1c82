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
	$(BIN)/python -m pip install --quiet -e '.[test]' -e ./testkit
	touch $(STAMP)

## The zero-config demo: the daemon on embedded PostgreSQL, console transports, a sample booking walked through.
run: $(STAMP)
	$(BIN)/flavor-worker demo

## Run the whole test suite (real PostgreSQL: TEST_DATABASE_URL, Docker, or embedded).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -n $(PYTEST_WORKERS) -q

## The minutes-long tests only (the console's pages on a 1,000,000-event ledger); .ci/run runs them.
test-slow: $(STAMP)
	$(BIN)/pytest -q -s -m slow --run-slow

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
